"""What every command shares: error handling, stderr notices, progress bars and output formats."""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from rich.table import Table

from faramir.errors import FaramirError

stderr = Console(stderr=True, highlight=False)
T = TypeVar("T")

EXIT_ERROR = 1  # the command could not do its job
EXIT_PARTIAL = 3  # it did its job but some inputs were unreadable (reported on stderr)


def fail(message: str, code: int = EXIT_ERROR):
    stderr.print(f"Error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn our exceptions into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FaramirError as ex:
            fail(str(ex))
        except KeyboardInterrupt:
            stderr.print("Interrupted.", markup=False)
            raise typer.Exit(130)

    return wrapper


def warn(message: str) -> None:
    stderr.print(f"Warning: {message}", markup=False, soft_wrap=True)


def warn_generated(info) -> None:
    """Say loudly that scores from generated weights mean nothing."""
    if info is not None and info.generated:
        stderr.print(
            f"WARNING: {info.weights_dir} holds {info.generated}. "
            "These are NOT the FARAMIR weights.",
            style="bold red", markup=False, soft_wrap=True,
        )


def progress_bar(transient: bool = False, unit: str = "images") -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
        transient=transient,
        disable=not stderr.is_terminal,
    )


def track(items: Iterable[T], total: int | None, description: str, show: bool = True,
          count: Callable[[T], int] = lambda _: 1, unit: str = "img") -> Iterator[T]:
    """Yield `items`, advancing a progress bar on stderr (only on a terminal)."""
    if not show or not stderr.is_terminal:
        yield from items
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, rate="")
        for item in items:
            bar.advance(task, count(item))
            t = bar.tasks[task]
            speed = t.finished_speed or t.speed
            bar.update(task, rate=f"{speed:.2f} {unit}/s" if speed else "")
            yield item


FORMATS = ("table", "jsonl", "csv", "tsv")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return "" if v is None else str(v)


def write_rows(rows: Iterable[dict], fmt: str, columns: Sequence[str], out=None) -> int:
    """Print rows as a table, JSON lines, CSV or TSV on stdout; returns how many."""
    out = out or sys.stdout
    n = 0
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
        fail(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    out.flush()
    return n
