"""Writing an export as one table file: CSV, JSON lines or Parquet, written beside the destination
and linked into place only if the name is still free."""

from __future__ import annotations

import csv
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from faramir import json_text
from faramir.files import atomic_path
from faramir.store.errors import ExportError

if TYPE_CHECKING:
    from faramir.store.exports import ExportResult


def write_table_file(batches, dest: Path, fmt: str, result: ExportResult, progress) -> None:
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
