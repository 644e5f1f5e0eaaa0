"""Label files: curator labels imported from a CSV (`path,label` or `id,label`) or JSON lines
(`faramir labels import`).

A row names an image by content id or by path; a path is matched through the ``files`` table, or
by hashing the file when it is on disk. Rows naming images that are not cached are reported,
never silently dropped.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from faramir.labels import canonical_label
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import LabelsError
from faramir.store.labels.table import path_index, resolve_ref


@dataclass
class Skipped:
    line: int  # 1-based line (CSV: counting the header) or JSONL line number
    ref: str
    reason: str


@dataclass
class ImportReport:
    file: str
    imported: int = 0
    skipped: list[Skipped] = field(default_factory=list)


EXAMPLE = 'a CSV with a header (path,label or id,label), or JSON lines such as {"path": "a.png", "label": "accept"}'


def _read_rows(path: Path) -> tuple[list[tuple[int, str, str]], list[Skipped]]:
    """((line, ref, label) of every row, the lines refused as they were read) from a CSV with a
    header (path|id|image, label) or JSON lines (one object a line). A file that is neither (not
    text, no header, a line that is no JSON at all) raises LabelsError: nothing is imported."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as ex:
        raise LabelsError(f"{path}: cannot read ({ex.strerror}); give {EXAMPLE}") from ex
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not a text file (UTF-8); give {EXAMPLE}") from None
    if "\x00" in text:
        raise LabelsError(f"{path}: holds NUL bytes, so it is no text file; give {EXAMPLE}")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return _json_rows(path, text)
    reader = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(reader, [])]
    ref_col = next((header.index(c) for c in ("path", "id", "image") if c in header), None)
    if ref_col is None or "label" not in header:
        raise LabelsError(f"{path}: the CSV needs a header row with a 'path' (or 'id') column and a "
                          f"'label' column, e.g. 'path,label'")
    label_col = header.index("label")
    rows = []
    for n, row in enumerate(reader, 2):
        if not any(cell.strip() for cell in row):
            continue
        cells = row + [""] * (max(ref_col, label_col) + 1 - len(row))
        rows.append((n, cells[ref_col].strip(), cells[label_col].strip()))
    return rows, []


def _json_rows(path: Path, text: str) -> tuple[list[tuple[int, str, str]], list[Skipped]]:
    rows, refused = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as ex:
            raise LabelsError(f"{path}:{n}: not valid JSON ({ex}); give {EXAMPLE}") from None
        if not isinstance(obj, dict):
            refused.append(Skipped(n, line.strip()[:40], "not a JSON object; write {\"path\": ..., \"label\": ...}"))
            continue
        ref = obj.get("id") or obj.get("path") or obj.get("image")
        rows.append((n, str(ref or ""), str(obj.get("label") or "")))
    return rows, refused


def import_labels(file: str | os.PathLike, db: str | os.PathLike | Cache | None = None,
                  source: str | None = None) -> ImportReport:
    """Import labels; a later label for the same image replaces the earlier one."""
    cache = Cache.open(db)
    cache.check_writable()
    path = Path(file)
    rows, refused = _read_rows(path)
    report = ImportReport(str(path), skipped=refused)
    paths, ids = path_index(cache), cache.ids()
    records: dict[str, dict] = {}
    now = datetime.now(timezone.utc)
    for line, ref, label in rows:
        if not ref:
            report.skipped.append(Skipped(line, ref, "no path or id"))
            continue
        try:
            label = canonical_label(label)
        except ValueError as ex:
            report.skipped.append(Skipped(line, ref, str(ex).split("\n")[0]))
            continue
        content_id, reason = resolve_ref(ref, path.parent, paths, ids)
        if content_id is None:
            report.skipped.append(Skipped(line, ref, reason))
            continue
        records[content_id] = {"id": content_id, "label": label, "source": source or str(path),
                               "imported_at": now}
    if records:
        data = pa.Table.from_pylist(list(records.values()), schema=schema.LABELS_SCHEMA)
        (cache.table(schema.LABELS).merge_insert("id")
         .when_matched_update_all().when_not_matched_insert_all().execute(data))
    report.imported = len(records)
    report.skipped.sort(key=lambda skipped: skipped.line)
    return report
