"""Export the rows passing a filter: as a CSV, JSON-lines or Parquet file, or as the image files
themselves copied, hard-linked or symlinked into a folder (optionally one subfolder per label).

Nothing is ever overwritten:

- a table file that already exists is refused (the new file is written beside it and linked into
  place with a call that fails if the name is taken, so a concurrent writer cannot be clobbered);
- in a folder, an image goes in under its own file name; if that name is taken by another file it
  goes in as ``NAME.<first 12 hex digits of its id>.EXT``; if that is taken too it is skipped and
  reported as a clash. A name already holding the same content (same size and sha256, as after a
  rerun of the same export) counts as present and is left alone, so an export can be resumed.
- a row none of whose paths exists any more is reported as missing, and one whose files no longer
  hold its content (edited, replaced, a symlink to something else) as changed: only bytes that
  hash to the row's content id are exported (`faramir.store.exports.files`); the export goes on.

It writes only where it is asked to: never inside the cache, nor on the kernel's file systems
(`faramir.store.exports.destination`); a full disk or a refusal there is one line naming the
destination.

A cache built from GENERATED weights says so in every table it exports: a `weights_generated`
column (what made the weights) on every row, and in Parquet also the file's metadata
(`faramir.weights_generated`). Paths are written as the cache stores them (`faramir.store.schema`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faramir.store.cache import Cache
from faramir.store.errors import ExportError
from faramir.store.exports.destination import check_destination, writing_to
from faramir.store.exports.files import write_files
from faramir.store.exports.rows import dropped, filtered_batches, marked, ranked_batches
from faramir.store.exports.tables import write_table_file
from faramir.store.filters import Filter
from faramir.store.heads.columns import on_head
from faramir.store.queries.ranking import top

TABLE_FORMATS = ("csv", "jsonl", "parquet")
FORMATS = (*TABLE_FORMATS, "files")
LINKS = ("copy", "hardlink", "symlink")
FACT_COLUMNS = ("size", "mtime_ns", "width", "height", "format", "mode", "ingested_at")
EMBEDDING_COLUMNS = ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features")


@dataclass
class ExportResult:
    """What an export did. `missing`: paths of rows with no file left; `changed`: paths of rows
    whose files no longer hold the cached content (not exported); `clashes`: names taken."""

    dest: str
    format: str
    rows: int = 0
    written: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Rows not exported: their files are gone or changed, or their names taken."""
        return len(self.missing) + len(self.changed) + len(self.clashes)


def infer_format(dest: str | os.PathLike) -> str:
    suffix = Path(dest).suffix.lower().lstrip(".")
    return {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "parquet": "parquet"}.get(suffix, "files")


def export(
    dest: str | os.PathLike,
    db: str | os.PathLike | Cache | None = None,
    *,
    format: str | None = None,
    link: str = "copy",
    by_label: bool = False,
    with_embeddings: bool = False,
    sort: str | None = None,
    descending: bool = True,
    limit: int | None = None,
    dedupe: bool = False,
    dedupe_threshold: float | None = None,
    keep: str = "confidence",
    progress: Callable[[int, int], None] | None = None,
    filter: Filter | None = None,
    **filters,
) -> ExportResult:
    """Write the rows passing the filter (a `Filter`, or its fields as keyword arguments) to `dest`.

    `format`: csv, jsonl, parquet (a file), or files (a folder; `link` copy, hardlink or symlink;
    `by_label` makes one subfolder per label). Default: from dest's suffix, else files. Table
    columns: id, path, confidence, accepted, label, aesthetic_score, decision, paths, the file
    facts, and with `with_embeddings` the four vectors (jsonl and parquet only). `sort`/`limit`
    export only the best rows, as `top` ranks them. `dedupe` leaves out the near-duplicates that
    are not their group's keeper (`faramir.store.near_duplicates.groups`, at `dedupe_threshold` on the SigLIP
    embedding, keeper by `keep`). `progress(done, total)` after each batch."""
    fmt = format or infer_format(dest)
    dest = Path(dest)
    _check(dest, fmt, link, with_embeddings)
    cache = Cache.open(db)
    check_destination(dest, cache.uri)
    f = Filter.of(filter, **filters)
    extra = [*FACT_COLUMNS, *(EMBEDDING_COLUMNS if with_embeddings else ())]
    result = ExportResult(str(dest), fmt)
    ranked = sort is not None or limit is not None

    generated = cache.get_meta("weights_generated") or ""

    def run(cols, ds) -> ExportResult:
        drop = dropped(cache, f, dedupe_threshold, keep) if dedupe else set()
        if ranked:
            wanted = None if limit is None else limit + len(drop)
            ids = top(cache, sort=sort or "confidence", descending=descending, limit=wanted,
                      filter=f).column("id").to_pylist()
            batches = ranked_batches(ds, cols, f, extra, [i for i in ids if i not in drop][:limit])
        else:
            batches = filtered_batches(ds, cols, f, extra, drop)
        with writing_to(dest, result):
            if fmt == "files":
                write_files(batches, dest, link, by_label, result, progress)
            else:
                write_table_file(marked(batches, generated), dest, fmt, result, progress)
        return result

    return on_head(cache, f.head, run)


def _check(dest: Path, fmt: str, link: str, with_embeddings: bool) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if link not in LINKS:
        raise ExportError(f"link {link!r}: use one of {', '.join(LINKS)}")
    if with_embeddings and fmt not in ("jsonl", "parquet"):
        raise ExportError("embeddings can only be exported to jsonl or parquet")
    if fmt in TABLE_FORMATS and (dest.exists() or dest.is_symlink()):
        raise ExportError(f"{dest} exists; choose another name or remove it first")
    if fmt == "files" and dest.exists() and not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a folder")


# -- table files ----------------------------------------------------------------------------------


# -- image files ----------------------------------------------------------------------------------
