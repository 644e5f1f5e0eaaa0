"""`faramir ingest --watch`: draw `faramir.store.ingestion.watch.watch`'s events on stderr (the
first pass as a progress bar and its summary, then one line per commit) and stop it cleanly on
Ctrl-C or SIGTERM: the first signal lets the batch in progress commit, a second one stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from faramir.cli.common import failed_files, note, progress_bar, stderr, warn
from faramir.cli.output import printable


@contextlib.contextmanager
def stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (once set, SIGINT interrupts at once); restored afterwards.
    Decode workers forked meanwhile inherit the handler and let the signal pass: the watch stops
    them (a Ctrl-C at a terminal reaches every process of the group)."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            return
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        os.write(2, b"Stopping after the current commit (Ctrl-C again to stop at once)...\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def draw(events) -> None:
    """Draw a watch's events until it stops."""
    from faramir.store.ingestion import IngestPlan, IngestProgress, IngestSummary
    from faramir.store.ingestion.watch import WatchCommit, WatchGone, WatchStarted, WatchStopped

    bar = task = None
    with contextlib.closing(events), contextlib.ExitStack() as drawing:
        for event in events:
            if isinstance(event, IngestPlan) and event.to_read:
                bar = drawing.enter_context(progress_bar())  # closed by the summary, or at the end
                task = bar.add_task("ingest", total=event.to_read, rate="")
            elif isinstance(event, IngestProgress):
                for message in event.warnings:
                    warn(message)
                if task is not None:
                    bar.update(task, completed=event.done, rate=f"{event.files_per_s:.2f} img/s" if event.done else "")
            elif isinstance(event, IngestSummary):
                drawing.close()
                bar = task = None
                _first_pass(event)
            elif isinstance(event, WatchStarted):
                roots = ", ".join(event.roots)
                note(f"Watching {roots} (a file is read once unchanged for {event.settle_s:g} s); Ctrl-C stops.")
            elif isinstance(event, WatchCommit):
                drawing.close()  # a first pass stopped part way: its bar
                _line(event)
            elif isinstance(event, WatchGone):
                note(f"{len(event.paths)} file{'s' if len(event.paths) != 1 else ''} gone from the watched folders "
                     f"(e.g. {event.paths[0]}); their cached rows stay")
            elif isinstance(event, WatchStopped):
                commits = f"{event.commits} commit{'s' if event.commits != 1 else ''}"
                note(f"Stopped: {commits} after the first pass; in all {event.new} new, {event.known} known, "
                     f"{event.failed} failed ({event.elapsed_s:.1f} s).")


def _first_pass(s) -> None:
    failed_files(s.failures)
    note(f"Ingested {s.found} files into {s.db}: {s.new} new, {s.unchanged} unchanged, {s.duplicate} duplicate, "
         f"{s.failed} failed ({s.elapsed_s:.1f} s).")


def _line(c) -> None:
    """One line per commit: when, how many files, new / known / failed, how long."""
    stopped = " (stopped part way: at least these; the rest at the next run)" if c.interrupted else ""
    when = c.at.astimezone().strftime("%H:%M:%S")
    stderr.print(printable(f"{when} {c.files} file{'s' if c.files != 1 else ''}: {c.new} new, {c.known} known, "
                           f"{c.failed} failed ({c.elapsed_s:.1f} s){stopped}"), markup=False, soft_wrap=True)
    for message in c.warnings:
        warn(message)
    failed_files(c.failures)
