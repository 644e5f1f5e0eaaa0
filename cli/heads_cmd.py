"""`faramir rescore` and `faramir heads list|rm|diff`: the heads whose scores the cache holds, and
what switching from one to another changes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faramir.cli.common import Bar, handle_errors, note
from faramir.cli.options import Db, ListFormat, ListFormatOpt, ReportFormat, ReportFormatOpt, Threshold
from faramir.cli.output import emit, emit_json
from faramir.config import DEFAULT_THRESHOLD
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


@handle_errors
def heads_diff(
    head_a: Annotated[str, typer.Argument(help="The head in use (e.g. faramir-v1).")],
    head_b: Annotated[str, typer.Argument(help="The head that would replace it (e.g. a finetune).")],
    threshold: Threshold = DEFAULT_THRESHOLD,
    db: Db = None,
    fmt: ReportFormatOpt = ReportFormat.table,
):
    """What switching from head A to head B changes: the images that go accept → reject and
    reject → accept, by B's reason, and how many curator labels each head gets right.

    Example: faramir heads diff faramir-v1 tuned --threshold 0.5

    The flipped images themselves: the gallery's Compare view, or 'faramir top --head B' with filters.
    """
    from faramir.store.heads.compare import heads_diff as run

    diff = run(head_a, head_b, db, threshold=threshold)
    if fmt == ReportFormat.json:
        emit_json(diff.to_dict())
        return
    print(f"{head_a} → {head_b} at threshold {diff.threshold}: {diff.total} images scored by both")
    print(f"  accept → reject {diff.accept_to_reject:>9}")
    print(f"  reject → accept {diff.reject_to_accept:>9}")
    if diff.labelled:
        print(f"  curator labels right: {head_a} {diff.right_a} of {diff.labelled}, {head_b} {diff.right_b} of "
              f"{diff.labelled} ({diff.fixed} flips fix a wrong decision, {diff.broken} break a right one)")
    else:
        print("  no curator labels on these images: nothing says which head is right")
    if diff.by_reason:
        print()
        emit(diff.by_reason, "table", ["flip", "reason", "count"])
