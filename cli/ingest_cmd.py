"""`faramir ingest` and `faramir failures`: stage one into the cache, and what it could not read."""

from __future__ import annotations

import contextlib
from typing import Annotated, Optional

import typer

from faramir.cli import options
from faramir.cli.common import EXIT_PARTIAL, fail, failed_files, handle_errors, note, progress_bar, warn
from faramir.cli.options import (
    BatchSize,
    Compile,
    Db,
    Decode,
    DecodeOpt,
    Device,
    FileList,
    ListFormat,
    ListFormatOpt,
    Paths,
    Precision,
    PrecisionOpt,
    Recursive,
    WeightsDir,
    Workers,
)
from faramir.cli.output import emit
from faramir.store import limits


@handle_errors
def ingest(
    paths: Paths,
    db: Db = None,
    recursive: Recursive = False,
    file_list: FileList = None,
    batch_size: BatchSize = 8,
    workers: Workers = None,
    device: Device = "auto",
    precision: PrecisionOpt = Precision.fp32,
    weights_dir: WeightsDir = None,
    compile: Compile = False,
    decode: DecodeOpt = Decode.faithful,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Read again files that failed before even if unchanged.")] = False,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", metavar="ADDRESS",
        help="Read and run the experts on Ray Data: 'local' starts Ray on this machine, 'auto' or "
             "ray://HOST:PORT joins a cluster (needs faramir[ray]; --device applies to its model "
             "actors, --workers does not).")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="After the first pass, keep ingesting files as they appear or change, one line "
                        "per commit; Ctrl-C stops after the current commit.")] = False,
    settle: Annotated[float, typer.Option(
        "--settle", metavar="SECONDS", min=limits.MIN_SETTLE, max=limits.MAX_SETTLE,
        help="With --watch: how long a file's size and mtime must stay unchanged before it is read.")] = 2.0,
):
    """Run the experts once per image and keep their outputs in the cache, scored by every head.

    Example: faramir ingest ./art -r --db ./art.lancedb

    Unchanged files are not read again; renamed or copied ones are recognised by content.

    Interrupt it at any time: committed work is kept and a rerun finishes the rest.

    Unreadable files are recorded (see 'faramir failures') and skipped, and the run goes on; the
    exit status is then 3, as for 'faramir assess'.

    On a Ray cluster: faramir ingest /shared/art -r --db s3://bucket/art.lancedb --ray auto

    Keep watching a folder that grows: faramir ingest ./incoming -r --watch
    """
    from faramir.store.ingestion import ingest as run

    def load():  # with --ray only to fingerprint the weights: each Ray model actor loads its own
        if ray is not None:
            return options.load_model(weights_dir, "cpu", "fp32")
        return options.load_model(weights_dir, device, precision.value, batch_size if compile else None)

    if watch:
        _watch(paths, db, load, recursive, file_list, ray, settle, batch_size=batch_size, workers=workers,
               device=device, precision=precision.value, compile=compile, retry_failed=retry_failed,
               decode=decode.value)
        return
    events = run(paths, db=db, model=load, recursive=recursive, file_list=file_list,
                 batch_size=batch_size, workers=workers, device=device, precision=precision.value,
                 compile=compile, retry_failed=retry_failed, ray=ray, decode=decode.value)
    _finish(_drawn(events))


def _watch(paths, db, load, recursive: bool, file_list, ray, settle: float, **options) -> None:
    """`ingest --watch`: the first pass, then every file that settles, until Ctrl-C (exit 0)."""
    import threading

    from faramir.cli.watching import draw, stopping_on_signals
    from faramir.store.ingestion.watch import watch

    if file_list is not None or ray is not None:
        fail(f"--watch watches folders on this machine: drop {'--file-list' if file_list is not None else '--ray'}")
    stop = threading.Event()
    with stopping_on_signals(stop):
        draw(watch(paths, db=db, model=load, recursive=recursive, settle=settle, stop=stop, **options))


def _drawn(events):
    """Draw an ingest's events (a progress bar, its warnings) and return its summary."""
    from faramir.store.ingestion import IngestPlan, IngestProgress, IngestSummary

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
    return summary


def _finish(s) -> None:
    """Print the summary; exit with status 3 when some files could not be read, as assess does."""
    failed_files(s.failures)
    rate = f", {s.images_per_s:.2f} images/s" if s.new else ""
    note(f"Ingested {s.found} files into {s.db}: {s.new} new, {s.unchanged} unchanged, "
         f"{s.duplicate} duplicate, {s.failed} failed ({s.elapsed_s:.1f} s{rate}).")
    if any(f.recorded_earlier for f in s.failures):
        note("Use --retry-failed to read unchanged failed files again.")
    if s.failed:
        raise typer.Exit(EXIT_PARTIAL)


@handle_errors
def failures(db: Db = None, fmt: ListFormatOpt = ListFormat.table):
    """List the files ingest could not read, with the reason and when.

    Example: faramir failures --db ./art.lancedb --format csv > failures.csv

    A failed file is retried automatically once it changes, or with 'faramir ingest --retry-failed'.
    """
    from faramir.store.ingestion.failures import FAILURE_COLUMNS
    from faramir.store.ingestion.failures import failures as list_failures

    rows = list_failures(db)
    if not rows and fmt == ListFormat.table:
        note("No failures recorded.")
        return
    emit(rows, fmt, FAILURE_COLUMNS if fmt != ListFormat.table else ("path", "reason", "failed_at"))
