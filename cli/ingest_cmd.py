"""`faramir ingest` and `faramir failures`: stage one into the cache, and what it could not read."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from cli import options
from cli.app import app
from cli.common import handle_errors, progress_bar, stderr, warn, write_rows

Db = typer.Option(
    None, "--db", envvar="FARAMIR_DB", show_envvar=True,
    help="The cache: a folder or an object-store URI (default: ~/.local/share/faramir/cache.lancedb).",
)


@app.command()
@handle_errors
def ingest(
    paths: List[str] = typer.Argument(..., help="Image files and/or folders."),
    db: Optional[str] = Db,
    recursive: bool = options.Recursive,
    file_list: Optional[str] = options.FileList,
    batch_size: int = options.BatchSize,
    workers: Optional[int] = options.Workers,
    device: str = options.Device,
    precision: str = options.Precision,
    weights_dir: Optional[Path] = options.WeightsDir,
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Read again files that failed before even if unchanged."),
):
    """Run the experts once per image and keep their outputs in the cache, scored by every head.

    Example: faramir ingest ./art -r --db ./art.lancedb

    Unchanged files are not read again; renamed or copied ones are recognised by content.

    Interrupt it at any time: committed work is kept and a rerun finishes the rest.

    Unreadable files are recorded (see 'faramir failures') and skipped; they do not fail the run.
    """
    from store.ingest import IngestPlan, IngestProgress, IngestSummary, ingest as run

    def load():
        return options.load_model(weights_dir, device, precision)

    events = run(paths, db=db, model=load, recursive=recursive, file_list=file_list,
                 batch_size=batch_size, workers=workers, device=device, precision=precision,
                 retry_failed=retry_failed)
    summary = None
    with contextlib.closing(events), progress_bar() as bar:
        task = None
        for event in events:
            if isinstance(event, IngestPlan):
                if not event.found:
                    warn("no image files found")
                if event.to_read:
                    task = bar.add_task("ingest", total=event.to_read, rate="")
            elif isinstance(event, IngestProgress):
                for message in event.warnings:
                    warn(message)
                if task is not None:
                    rate = f"{event.files_per_s:.2f} img/s" if event.done else ""
                    bar.update(task, completed=event.done, rate=rate)
            elif isinstance(event, IngestSummary):
                summary = event
    _print_summary(summary)


def _print_summary(s) -> None:
    for f in s.failures:
        note = " (unchanged since it failed before; not retried)" if f.recorded_earlier else ""
        stderr.print(f"Failed: {f.path}: {f.reason}{note}", markup=False, soft_wrap=True)
    rate = f", {s.images_per_s:.2f} images/s" if s.new else ""
    stderr.print(
        f"Ingested {s.found} files into {s.db}: {s.new} new, {s.unchanged} unchanged, "
        f"{s.duplicate} duplicate, {s.failed} failed ({s.elapsed_s:.1f} s{rate}).",
        markup=False, soft_wrap=True,
    )
    if any(f.recorded_earlier for f in s.failures):
        stderr.print("Use --retry-failed to read unchanged failed files again.", markup=False)


@app.command()
@handle_errors
def failures(
    db: Optional[str] = Db,
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
):
    """List the files ingest could not read, with the reason and when.

    Example: faramir failures --db ./art.lancedb --format csv > failures.csv

    A failed file is retried automatically once it changes, or with 'faramir ingest --retry-failed'.
    """
    from store.failures import FAILURE_COLUMNS, failures as list_failures

    if fmt not in ("table", "jsonl", "csv"):
        raise typer.BadParameter("use table, jsonl or csv", param_hint="--format")
    rows = list_failures(db)
    if not rows and fmt == "table":
        stderr.print("No failures recorded.", markup=False)
        return
    columns = FAILURE_COLUMNS if fmt != "table" else ("path", "reason", "failed_at")
    write_rows(rows, fmt, columns)
