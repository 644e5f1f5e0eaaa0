"""Every `--format` a command prints, from one place: rows as a table, JSON lines, CSV or TSV;
result rows of a query also as upstream's assess line; reports as one JSON object."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return "" if v is None else str(v)


def emit(rows: Iterable[dict], fmt: str, columns: Sequence[str], out=None) -> int:
    """Print rows on stdout as a table, JSON lines, CSV or TSV; returns how many."""
    out = out or sys.stdout
    n = 0
    fmt = getattr(fmt, "value", fmt)
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")
            n += 1
    elif fmt in ("csv", "tsv"):
        writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
            n += 1
    elif fmt == "table":
        table = Table(*columns, show_edge=False, header_style="bold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
            n += 1
        console = Console(file=out, highlight=False)
        if not console.is_terminal:  # piped or redirected: never truncate ids and paths
            console = Console(file=out, highlight=False, width=100_000)
        console.print(table)
    else:
        raise ValueError(f"unknown row format {fmt!r}")
    out.flush()
    return n


def emit_results(table, fmt: str, columns: Sequence[str]) -> int:
    """A query's result rows (`store.scores.results`); tsv is upstream's assess line."""
    from faramir.decision import tsv_line

    rows = table.to_pylist()
    if getattr(fmt, "value", fmt) == "tsv":
        for row in rows:
            sys.stdout.write(tsv_line(row["path"], row["accepted"], row["label"], row["confidence"]) + "\n")
        sys.stdout.flush()
        return len(rows)
    return emit(rows, fmt, columns)


ASSESS_CSV_HEADER = ("path", "accepted", "label", "confidence", "aesthetic_score")  # then the 31 logits


def assessment_header(fmt: str) -> str | None:
    """The line before `faramir assess`'s results, if its format has one (csv's header)."""
    from faramir.config import OUTPUT_NAMES

    return ",".join([*ASSESS_CSV_HEADER, *OUTPUT_NAMES]) if getattr(fmt, "value", fmt) == "csv" else None


def assessment_line(result, fmt: str) -> str:
    """One `faramir.pipeline.Assessment` as upstream's TSV line, a JSON line or a CSV row."""
    fmt = getattr(fmt, "value", fmt)
    if fmt == "tsv":
        return result.tsv()
    if fmt == "jsonl":
        return json.dumps({
            "path": result.path, "accepted": result.accepted, "label": result.label,
            "confidence": result.confidence, "aesthetic_score": result.aesthetic_score,
            "logits": result.logits,
        })
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([
        result.path, result.accepted, result.label, result.confidence, result.aesthetic_score, *result.logits,
    ])
    return buf.getvalue()


def emit_json(value: Any, indent: int | None = None) -> None:
    """One JSON object on stdout (floats as they are; other values as text)."""
    print(json.dumps(value, indent=indent, default=_json_default))


def _json_default(value: Any):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    return str(value)
