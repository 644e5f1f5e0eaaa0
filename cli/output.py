"""Every `--format` a command prints, from one place: rows as a table, JSON lines, CSV or TSV;
result rows of a query also as upstream's assess line; reports as one JSON object.

Whatever a row holds, the output stays parseable: JSON is strict (`faramir.json_text`: NaN as
null), CSV keeps full precision (only the table rounds, for reading), a TSV field escapes tab,
newline, carriage return and backslash (`faramir.decision.tsv_field`), and text that is not
valid Unicode (a file name's bytes that are not UTF-8) is printed with \\xNN escapes (`printable`).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from faramir import json_text
from faramir.decision import tsv_field

WRAPPED = {"path", "paths", "reason", "source"}  # table columns folded onto more lines, never cut


def printable(text: str) -> str:
    """`text` as it can be written to any UTF-8 stream: the bytes of a file name that are not
    UTF-8 (which Python keeps as surrogate escapes) as \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cell(v: Any, fmt: str) -> str:
    """One value as table, CSV or TSV text (a TSV field escaped before any \\xNN is added)."""
    if isinstance(v, float):
        text = f"{v:.4f}" if fmt == "table" else repr(v)
    elif isinstance(v, (list, tuple)):
        text = json_text.dumps(v)
    else:
        text = "" if v is None else str(v)
    return printable(tsv_field(text) if fmt == "tsv" else text)


def _printable_row(row: dict) -> dict:
    return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}


def emit(rows: Iterable[dict], fmt: str, columns: Sequence[str], out=None) -> int:
    """Print rows on stdout as a table, JSON lines, CSV or TSV; returns how many."""
    out = out or sys.stdout
    n = 0
    fmt = getattr(fmt, "value", fmt)
    if fmt == "jsonl":
        for row in rows:
            out.write(json_text.dumps(_printable_row(row)) + "\n")
            n += 1
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c), fmt) for c in columns])
            n += 1
    elif fmt == "tsv":
        out.write("\t".join(map(tsv_field, columns)) + "\n")
        for row in rows:
            out.write("\t".join(_cell(row.get(c), fmt) for c in columns) + "\n")
            n += 1
    elif fmt == "table":
        table = Table(show_edge=False, header_style="bold")
        for c in columns:
            table.add_column(c, overflow="fold" if c in WRAPPED else "ellipsis")
        for row in rows:
            table.add_row(*(Text(_cell(row.get(c), fmt)) for c in columns))  # Text: no markup in paths
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
    """A query's result rows (`faramir.store.heads.columns.results`); tsv is upstream's assess line, followed by
    the distance for a nearest-neighbour search."""
    from faramir.decision import tsv_line

    rows = table.to_pylist()
    if getattr(fmt, "value", fmt) == "tsv":
        extra = [c for c in ("distance",) if c in columns]
        for row in rows:
            line = tsv_line(row["path"], row["accepted"], row["label"], row["confidence"])
            sys.stdout.write(printable("\t".join([line, *(_cell(row[c], "tsv") for c in extra)])) + "\n")
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
        return printable(result.tsv())
    path = printable(result.path)
    if fmt == "jsonl":
        return json_text.dumps({
            "path": path, "accepted": result.accepted, "label": result.label,
            "confidence": result.confidence, "aesthetic_score": result.aesthetic_score,
            "logits": result.logits,
        })
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([
        path, result.accepted, result.label, result.confidence, result.aesthetic_score, *result.logits,
    ])
    return buf.getvalue()


def emit_json(value: Any, indent: int | None = None) -> None:
    """One JSON object on stdout (strict JSON: non-finite numbers as null)."""
    print(json_text.dumps(value, indent=indent))
