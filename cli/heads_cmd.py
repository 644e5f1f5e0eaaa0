"""`faramir rescore` and `faramir heads list|rm`: the heads whose scores the cache holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faramir.cli.common import Bar, handle_errors, note
from faramir.cli.options import Db, ListFormat, ListFormatOpt
from faramir.cli.output import emit
from faramir.store import limits

HEAD_COLUMNS = ["name", "rows", "fingerprint", "pool", "created_at", "scored_from", "source", "prefix"]


@handle_errors
def rescore(
    head: Annotated[Path, typer.Option(
        "--head", help="Head checkpoint: a faramir-v1.pth or a file of norm.* + head.*.")],
    name: Annotated[str, typer.Option("--name", help="Name to keep its scores under (replaces a head of that name).")],
    db: Db = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=limits.MAX_HEAD_BATCH,
                                            help="Rows per head forward.")] = 4096,
    index: Annotated[bool, typer.Option("--index/--no-index", help="Index the new score columns afterwards.")] = True,
):
    """Score every cached image with a head checkpoint; no image is read, no trunk is run.

    Example: faramir rescore --head finetuned.pth --name curated-v2

    Refused if the checkpoint's attention pool is not the one the cache was built with.
    """
    from faramir.cli.allocator import keep_freed_memory

    keep_freed_memory()  # before Lance starts its threads: a rescore reads every embedding in batches
    from faramir.store.heads.rescore import rescore as run

    with Bar(f"rescore {name}") as bar:
        info = run(head, name, db=db, batch_size=batch_size, index=index, progress=bar)
    how = f"its decision layers over the cached v and f of {info.scored_from}, whose labels it reads; " \
        if info.scored_from else ""
    note(f"Scored {info.rows} images with head {info.name} "
         f"({how}fingerprint {info.fingerprint[:12]}, columns {info.prefix}_*).")


@handle_errors
def heads_list(db: Db = None, fmt: ListFormatOpt = ListFormat.table):
    """List the heads whose scores the cache holds.

    Example: faramir heads list --format jsonl
    """
    from faramir.store.heads.registry import list_heads

    rows = [info.to_dict() for info in list_heads(db)]
    if fmt == ListFormat.table:
        for row in rows:
            row["fingerprint"] = row["fingerprint"][:12]
            row["created_at"] = row["created_at"].strftime("%Y-%m-%d %H:%M")
    emit(rows, fmt, HEAD_COLUMNS)


@handle_errors
def heads_rm(name: Annotated[str, typer.Argument(help="The head to remove.")], db: Db = None):
    """Remove a head and its scores from the cache.

    Example: faramir heads rm curated-v1
    """
    from faramir.store.heads.registry import remove_head

    removed = remove_head(name, db)
    note(f"Removed head {removed.name} and the score columns no other head reads.")
