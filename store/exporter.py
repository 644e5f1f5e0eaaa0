"""Export the rows passing a filter: as a CSV, JSON-lines or Parquet file, or as the image files
themselves copied, hard-linked or symlinked into a folder (optionally one subfolder per label).

Nothing is ever overwritten:

- a table file that already exists is refused (the new file is written beside it and linked into
  place with a call that fails if the name is taken, so a concurrent writer cannot be clobbered);
- in a folder, an image goes in under its own file name; if that name is taken by another file it
  goes in as ``NAME.<first 12 hex digits of its id>.EXT``; if that is taken too it is skipped and
  reported as a clash. A name already holding the same content (same size and sha256, as after a
  rerun of the same export) counts as present and is left alone, so an export can be resumed.
- a row none of whose paths exists any more is reported as missing; the export goes on.

A cache built from GENERATED weights says so in every table it exports: a `weights_generated`
column (what made the weights) on every row, and in Parquet also the file's metadata
(`faramir.weights_generated`). Paths are written as the cache stores them (`store.schema`).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from faramir import json_text
from faramir.files import atomic_path, sha256_file
from store.db import Cache, sql_in
from store.errors import ExportError
from store.filters import Filter
from store.query import top
from store.schema import path_from_column
from store.scores import on_head, read_columns, results

TABLE_FORMATS = ("csv", "jsonl", "parquet")
FORMATS = (*TABLE_FORMATS, "files")
LINKS = ("copy", "hardlink", "symlink")
FACT_COLUMNS = ("size", "mtime_ns", "width", "height", "format", "mode", "ingested_at")
EMBEDDING_COLUMNS = ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features")
READ_BATCH = 4096


@dataclass
class ExportResult:
    """What an export did. `missing`: paths of rows with no file left; `clashes`: names taken."""

    dest: str
    format: str
    rows: int = 0
    written: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)


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
    are not their group's keeper (`store.near_duplicates`, at `dedupe_threshold` on the SigLIP
    embedding, keeper by `keep`). `progress(done, total)` after each batch."""
    fmt = format or infer_format(dest)
    dest = Path(dest)
    _check(dest, fmt, link, with_embeddings)
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    extra = [*FACT_COLUMNS, *(EMBEDDING_COLUMNS if with_embeddings else ())]
    result = ExportResult(str(dest), fmt)
    ranked = sort is not None or limit is not None

    generated = cache.get_meta("weights_generated") or ""

    def run(prefix: str, ds) -> ExportResult:
        drop = _dropped(cache, f, dedupe_threshold, keep) if dedupe else set()
        if ranked:
            wanted = None if limit is None else limit + len(drop)
            ids = top(cache, sort=sort or "confidence", descending=descending, limit=wanted,
                      filter=f).column("id").to_pylist()
            batches = _ranked_batches(ds, prefix, f, extra, [i for i in ids if i not in drop][:limit])
        else:
            batches = _filtered_batches(ds, prefix, f, extra, drop)
        if fmt == "files":
            _export_files(batches, dest, link, by_label, result, progress)
        else:
            _export_table(_marked(batches, generated), dest, fmt, result, progress)
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


def _dropped(cache: Cache, f: Filter, threshold: float | None, keep: str) -> set[str]:
    from store.near_duplicates import DEFAULT_THRESHOLD, non_keepers

    return non_keepers(cache, f, DEFAULT_THRESHOLD if threshold is None else threshold, keep)


def _filtered_batches(ds, prefix: str, f: Filter, extra: list[str],
                      drop: set[str] = frozenset()) -> Iterator[tuple[int, pa.Table]]:
    """(total, result rows) per batch of the rows passing `f`, less the ids `drop`; one empty batch
    when none do."""
    columns, where = [*read_columns(prefix), *extra], f.where(prefix)
    total = ds.count_rows(where) - len(drop)
    dropped = pa.array(sorted(drop), pa.string())
    empty = True
    for batch in ds.to_batches(columns=columns, filter=where, batch_size=READ_BATCH):
        rows = pa.Table.from_batches([batch])
        if drop:
            rows = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=dropped)))
        if rows.num_rows:
            empty = False
            yield total, results(rows, prefix, f.threshold, extra=extra)
    if empty:  # still a header / a schema
        yield 0, results(ds.to_table(columns=columns, filter="false"), prefix, f.threshold, extra=extra)


def _ranked_batches(ds, prefix: str, f: Filter, extra: list[str], ids: list[str]) -> Iterator[tuple[int, pa.Table]]:
    """(total, result rows) per batch of the rows `ids`, in that order."""
    columns = [*read_columns(prefix), *extra]
    if not ids:
        yield 0, results(ds.to_table(columns=columns, filter="false"), prefix, f.threshold, extra=extra)
    for lo in range(0, len(ids), READ_BATCH):
        chunk = ids[lo:lo + READ_BATCH]
        rows = ds.to_table(columns=columns, filter=sql_in("id", chunk))
        order = {image_id: n for n, image_id in enumerate(chunk)}
        rows = rows.take(pa.array(sorted(range(len(rows)), key=lambda n: order[rows.column("id")[n].as_py()])))
        yield len(ids), results(rows, prefix, f.threshold, extra=extra)


def _marked(batches, generated: str):
    """The batches with a `weights_generated` column (and Parquet metadata) when `generated`."""
    for total, table in batches:
        if generated:
            table = table.append_column("weights_generated", pa.array([generated] * len(table), pa.string()))
            table = table.replace_schema_metadata({"faramir.weights_generated": generated})
        yield total, table


# -- table files ----------------------------------------------------------------------------------


def _export_table(batches, dest: Path, fmt: str, result: ExportResult, progress) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(dest, overwrite=False) as tmp:  # never overwrite a file that appeared meanwhile
            _write_table(batches, tmp, fmt, result, progress)
    except FileExistsError:
        raise ExportError(f"{dest} exists; choose another name or remove it first") from None


def _write_table(batches, tmp: Path, fmt: str, result: ExportResult, progress) -> None:
    writer = None
    with open(tmp, "w", newline="", encoding="utf8") if fmt != "parquet" else nullcontext() as out:
        for total, table in batches:
            if fmt == "parquet":
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            elif fmt == "csv":
                if writer is None:
                    writer = csv.writer(out, lineterminator="\n")
                    writer.writerow(table.column_names)
                for row in table.to_pylist():
                    writer.writerow([_csv_cell(v) for v in row.values()])
            else:
                for row in table.to_pylist():
                    out.write(json_text.dumps(row) + "\n")
            result.rows += len(table)
            result.written += len(table)
            if progress is not None:
                progress(result.rows, total)
    if writer is not None and fmt == "parquet":
        writer.close()


def _csv_cell(value):
    if isinstance(value, list):
        return json_text.dumps(value)
    return "" if value is None else value


# -- image files ----------------------------------------------------------------------------------


def _export_files(batches, dest: Path, link: str, by_label: bool, result: ExportResult, progress) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for total, table in batches:
        for row in table.select(["id", "paths", "label", "size"]).to_pylist():
            result.rows += 1
            source = next((path_from_column(p) for p in row["paths"] or () if os.path.isfile(path_from_column(p))),
                          None)
            if source is None:
                result.missing.append((row["paths"] or ["(no path)"])[0])
            else:
                folder = dest / row["label"] if by_label else dest
                folder.mkdir(exist_ok=True)
                status = _place(source, folder, row["id"], link)
                if status == "written":
                    result.written += 1
                elif status == "present":
                    result.present += 1
                else:
                    result.clashes.append(status)
            if progress is not None:
                progress(result.rows, total)


def _place(source: str, folder: Path, image_id: str, link: str) -> str:
    """Put `source` into `folder` without overwriting: "written", "present" or the clashing path."""
    name = Path(source).name
    stem, ext = os.path.splitext(name)
    for candidate in (folder / name, folder / f"{stem}.{image_id[:12]}{ext}"):
        try:
            _create(source, candidate, link)
            return "written"
        except FileExistsError:
            if _same_content(candidate, source, image_id):
                return "present"
    return str(folder / name)


def _create(source: str, target: Path, link: str) -> None:
    """Create `target` from `source`; FileExistsError if the name is taken (never replaced)."""
    if link == "hardlink":
        os.link(source, target)
    elif link == "symlink":
        os.symlink(os.path.abspath(source), target)
    else:
        with open(source, "rb") as src, open(target, "xb") as out:
            try:
                shutil.copyfileobj(src, out, 1 << 20)
            except BaseException:
                out.close()
                target.unlink(missing_ok=True)
                raise
        shutil.copystat(source, target)


def _same_content(target: Path, source: str, image_id: str) -> bool:
    try:
        if os.path.samefile(target, source):
            return True
        if target.stat().st_size != os.stat(source).st_size:
            return False
        return sha256_file(target) == image_id
    except OSError:
        return False
