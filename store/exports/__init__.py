"""Export the rows passing a filter: as a CSV, JSON-lines or Parquet file, as the image files
themselves copied, hard-linked or symlinked into a folder (optionally one subfolder per label), or
as a training set: WebDataset tar shards or a Hugging Face dataset folder
(`faramir.store.exports.shards`, one module per format: `webdataset`, `hf`; the fields of a
sample written once, `records`).

Nothing is ever overwritten:

- a table file that already exists is refused (the new file is written beside it and linked into
  place with a call that fails if the name is taken, so a concurrent writer cannot be clobbered);
- in a folder, an image goes in under its own file name; if that name is taken by another file it
  goes in as ``NAME.<first 12 hex digits of its id>.EXT``; if that is taken too it is skipped and
  reported as a clash. A name already holding the same content (same size and sha256, as after a
  rerun of the same export) counts as present and is left alone, so an export can be resumed.
- a training set goes into a new or empty folder, one whole shard at a time; a rerun with the
  same options resumes it (the images already in a shard count as present), other options or
  other files there are refused.
- a row none of whose paths exists any more is reported as missing, and one whose files no longer
  hold its content (edited, replaced, a symlink to something else) as changed: only bytes that
  hash to the row's content id are exported (`faramir.files.copy_verified`); the export goes on.

It writes only where it is asked to: never inside the cache, nor on the kernel's file systems
(`faramir.store.exports.destination`); a full disk or a refusal there is one line naming the
destination.

A cache built from GENERATED weights says so in every table it exports: a `weights_generated`
column (what made the weights) on every row, and in Parquet also the file's metadata
(`faramir.weights_generated`); a training set says it in every sample. Paths are written as the
cache stores them (`faramir.store.schema`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faramir.store.cache import Cache
from faramir.store.errors import ExportError
from faramir.store.exports.destination import check_destination, writing_to
from faramir.store.exports.records import EMBEDDING_COLUMNS
from faramir.store.exports.rows import Selection, marked
from faramir.store.filters import Filter
from faramir.store.heads.columns import on_head

TABLE_FORMATS = ("csv", "jsonl", "parquet")
DATASET_FORMATS = ("webdataset", "hf")  # training sets, in shards
FORMATS = (*TABLE_FORMATS, "files", *DATASET_FORMATS)
LINKS = ("copy", "hardlink", "symlink")
FACT_COLUMNS = ("size", "mtime_ns", "width", "height", "format", "mode", "ingested_at")


@dataclass
class ExportResult:
    """What an export did. `missing`: paths of rows with no file left; `changed`: paths of rows
    whose files no longer hold the cached content (not exported); `clashes`: names taken;
    `present`: rows already there (a rerun); `shards`: shard files this run wrote (training sets)."""

    dest: str
    format: str
    rows: int = 0
    written: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)
    shards: int = 0

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
    with_logits: bool = False,
    shard_size: int | str | None = None,
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

    `format`: csv, jsonl, parquet (a file), files (a folder; `link` copy, hardlink or symlink;
    `by_label` makes one subfolder per label), webdataset or hf (a folder of shards of at most
    `shard_size` images, or bytes as "500MB": `faramir.store.exports.shards`). Default: from
    dest's suffix, else files. Table columns: id, path, confidence, accepted, label,
    aesthetic_score, decision, paths, the file facts, and with `with_embeddings` the four vectors
    (jsonl, parquet, webdataset and hf). A training set's fields: `faramir.store.exports.records`
    (`with_logits`: also the head's 31 logits). `sort`/`limit` export only the best rows, as `top`
    ranks them. `dedupe` leaves out the near-duplicates that are not their group's keeper
    (`faramir.store.near_duplicates.groups`, at `dedupe_threshold` on the SigLIP embedding,
    keeper by `keep`). `progress(done, total)` as rows are written."""
    fmt = format or infer_format(dest)
    dest = Path(dest)
    _check(dest, fmt, link, with_embeddings, with_logits, shard_size)
    cache = Cache.open(db)
    check_destination(dest, cache.uri)
    selection = Selection(Filter.of(filter, **filters), sort, descending, limit, dedupe, dedupe_threshold, keep)
    result = ExportResult(str(dest), fmt)
    if fmt in DATASET_FORMATS:
        from faramir.store.exports.shards import write_dataset

        with writing_to(dest, result):
            write_dataset(dest, fmt, cache, selection, result, progress, with_embeddings=with_embeddings,
                          with_logits=with_logits, shard_size=shard_size)
        return result
    return on_head(cache, selection.filter.head, lambda cols, ds: _write(
        cache, selection.batches(cache, cols, ds, [*FACT_COLUMNS, *(EMBEDDING_COLUMNS if with_embeddings else ())]),
        dest, link, by_label, result, progress))


def _write(cache: Cache, batches, dest: Path, link: str, by_label: bool, result: ExportResult, progress) -> ExportResult:
    """Write result rows as a table file or as image files."""
    with writing_to(dest, result):
        if result.format == "files":
            from faramir.store.exports.files import write_files

            write_files(batches, dest, link, by_label, result, progress)
        else:
            from faramir.store.exports.tables import write_table_file

            generated = cache.get_meta("weights_generated") or ""
            write_table_file(marked(batches, generated), dest, result.format, result, progress)
    return result


def _check(dest: Path, fmt: str, link: str, with_embeddings: bool, with_logits: bool, shard_size) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if link not in LINKS:
        raise ExportError(f"link {link!r}: use one of {', '.join(LINKS)}")
    if with_embeddings and fmt not in ("jsonl", "parquet", *DATASET_FORMATS):
        raise ExportError(f"embeddings can only be exported to jsonl or parquet, or a training set "
                          f"({', '.join(DATASET_FORMATS)})")
    if (with_logits or shard_size is not None) and fmt not in DATASET_FORMATS:
        what = "the logits" if with_logits else "a shard size"
        raise ExportError(f"{what}: only for --format {' or '.join(DATASET_FORMATS)} (a training set)")
    if fmt in DATASET_FORMATS:
        from faramir.store.exports.shards import parse_shard_size

        parse_shard_size(shard_size)  # a bad one refused before the cache opens
    if fmt in TABLE_FORMATS and (dest.exists() or dest.is_symlink()):
        raise ExportError(f"{dest} exists; choose another name or remove it first")
    if fmt not in TABLE_FORMATS and dest.exists() and not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a folder")
