"""`watch`: ingest, then keep ingesting the files that appear or change under the watched paths
(`faramir ingest PATH... --watch`).

Every batch is an ordinary `faramir.store.ingestion.ingest` of the files that settled, so every
guarantee of ingest holds: a kill at any moment loses at most the chunk in flight and a rerun
finishes it; two watchers (or a watcher and an ingest) on one cache never duplicate a row or drop
a path; a bad file is recorded and the watch goes on.

- **Watching starts first**, then the first pass: nothing that arrives during the first pass is
  missed. Changes come from the operating system (`watchfiles`: inotify, FSEvents, ...; set
  ``WATCHFILES_FORCE_POLLING=1`` on a network file system that sends no events).
- **Which files**: those a plain ingest of the same paths lists (`faramir.sources.discover`):
  image extensions, no hidden files or folders, sub-folders only with `recursive` (a folder
  created or moved in is walked).
- **Never a half-written file**: a file is read only once its size and modification time have
  stayed the same for `settle` seconds since the last change seen. The first pass leaves files
  younger than that to the watch. A writer that pauses longer than `settle` mid-file defeats
  this: give it a longer `settle`, or have it write under a hidden or other name and rename the
  finished file into place (a rename is seen as the file appearing).
- **Renames and copies** of cached content cost a hash: the content is known, only a path is
  added. **Deletions** change nothing in the cache (`WatchGone` reports them): a row keeps its
  scores and paths (content is what the cache keys on), `faramir export` reports a path that is
  gone as missing and skips it.
- **Stopping**: set the `stop` event (the CLI does on Ctrl-C): the batch in progress commits what
  it has computed, files not yet read are read by the next run, and a `WatchStopped` ends the
  events.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from faramir.errors import InputError
from faramir.files import inside
from faramir.sources import discover, image_extensions
from faramir.store import limits
from faramir.store.ingestion.driver import COMMIT_ROWS, COMMIT_SECONDS, ingest, resolve_model
from faramir.store.ingestion.events import FailedFile, IngestPlan, IngestProgress, IngestSummary
from faramir.store.ingestion.plan import stat

DEFAULT_SETTLE = 2.0  # seconds a file's size and mtime must stay unchanged before it is read
IN_PROCESS_BELOW = 32  # a batch of fewer files is read without starting decode workers


@dataclass
class WatchStarted:
    """The first pass is done; watching `roots` for what changes."""

    db: str
    roots: list[str]
    settle_s: float


@dataclass
class WatchCommit:
    """One batch of settled files ingested and committed. `interrupted`: stopped part way; the
    counts are then those of the files read up to the last progress event, and the files read
    after it (the batch in flight) were committed too: at least these."""

    at: datetime
    files: int
    new: int
    known: int  # already cached: unchanged, or known content at a new path (a rename, a copy)
    failed: int
    failures: list[FailedFile]
    elapsed_s: float
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False


@dataclass
class WatchGone:
    """Files gone from the watched paths (deleted, or renamed away). Their cached rows stay."""

    paths: list[str]


@dataclass
class WatchStopped:
    """Last event: the totals since the watch began (the first pass included)."""

    commits: int
    new: int
    known: int
    failed: int
    elapsed_s: float


WatchEvent = IngestPlan | IngestProgress | IngestSummary | WatchStarted | WatchCommit | WatchGone | WatchStopped


def watch(
    paths: Sequence[str | os.PathLike],
    *,
    db=None,
    recursive: bool = False,
    settle: float = DEFAULT_SETTLE,
    stop: threading.Event | None = None,
    model=None,
    weights_dir: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 8,
    workers: int | None = None,
    compile: bool = False,
    retry_failed: bool = False,
    commit_every: int = COMMIT_ROWS,
    commit_seconds: float = COMMIT_SECONDS,
    decode: str = "faithful",
) -> Iterator[WatchEvent]:
    """Ingest `paths` (the first pass: its `IngestPlan`, `IngestProgress` and `IngestSummary`),
    then yield `WatchStarted` and, until `stop` is set, a `WatchCommit` per batch of files that
    settled (`settle` seconds unchanged) and a `WatchGone` for files removed; last a
    `WatchStopped`. The model (`model`, as `ingest` takes it, or loaded from `weights_dir`) is
    loaded once, when the first file has to be read. Other options: as `ingest`'s."""
    limits.check("settle", settle, limits.MIN_SETTLE, limits.MAX_SETTLE, InputError)
    roots = _roots(paths)
    stop = stop if stop is not None else threading.Event()
    options = {"db": db, "model": _Once(model, weights_dir, device, precision), "batch_size": batch_size,
               "device": device, "precision": precision, "compile": compile, "retry_failed": retry_failed,
               "commit_every": commit_every, "commit_seconds": commit_seconds, "decode": decode}
    files = Pending(roots, recursive, settle)
    started, totals = time.monotonic(), Totals()
    changes = _changes(roots, recursive, settle, stop)
    try:
        next(changes, None)  # the watch runs from here: what arrives during the first pass is seen
        first = files.first_pass()
        summary = yield from _ingest(first, {**options, "workers": workers}, stop, pass_through=True)
        totals.add(summary, commit=False)
        if isinstance(summary, WatchCommit):  # the first pass stopped part way
            yield summary
        if not stop.is_set():
            yield WatchStarted(_db_name(summary, db), roots, settle)
        for batch in changes if not stop.is_set() else ():
            files.note(batch)
            if files.gone:
                yield WatchGone(files.take_gone())
            ready = files.ready()
            if ready and not stop.is_set():
                few = len(ready) < IN_PROCESS_BELOW
                commit = yield from _ingest(ready, {**options, "workers": 0 if few else workers}, stop)
                totals.add(commit)
                yield commit
            if stop.is_set():
                break
    finally:
        changes.close()
    yield WatchStopped(totals.commits, totals.new, totals.known, totals.failed, time.monotonic() - started)


def _changes(roots: list[str], recursive: bool, settle: float, stop: threading.Event) -> Iterator:
    """watchfiles' sets of changes under `roots` until `stop`, and an empty set at least every
    tick, so that waiting files are looked at again while nothing happens."""
    import watchfiles

    tick = int(min(1000, max(50, settle * 250)))  # ms between looks at the waiting files
    return watchfiles.watch(*roots, watch_filter=None, recursive=recursive, stop_event=stop, debounce=tick,
                            step=50, rust_timeout=tick, yield_on_timeout=True, raise_interrupt=False)


def _roots(paths: Sequence[str | os.PathLike]) -> list[str]:
    roots = [os.path.abspath(os.fspath(p)) for p in paths]
    if not roots:
        raise InputError("watch: give at least one folder or file to watch")
    for root in roots:
        if not os.path.exists(root):
            raise InputError(f"{root}: no such file or directory")
    return roots


def _db_name(summary, db) -> str:
    return getattr(summary, "db", None) or os.fspath(getattr(db, "uri", db) or "")


@dataclass
class Totals:
    commits: int = 0
    new: int = 0
    known: int = 0
    failed: int = 0

    def add(self, done, commit: bool = True) -> None:
        """Count an ingest's `IngestSummary` or `WatchCommit` (None: nothing); `commit`: a watch's batch."""
        if isinstance(done, IngestSummary):
            self.new, self.known = self.new + done.new, self.known + done.unchanged + done.duplicate
        elif isinstance(done, WatchCommit):
            self.new, self.known = self.new + done.new, self.known + done.known
        if done is not None:
            self.failed += done.failed
            self.commits += commit


def _ingest(paths: list[str], options: dict, stop: threading.Event, pass_through: bool = False):
    """Ingest `paths` (a file that vanished meanwhile is left out), stopping at the next batch
    once `stop` is set. The first pass passes ingest's events through and returns its summary (a
    `WatchCommit` if it stopped part way); a batch returns a `WatchCommit`."""
    t0, at = time.monotonic(), datetime.now(timezone.utc)
    last, warned = None, []
    for attempt in range(3):
        paths = [p for p in paths if os.path.exists(p)]  # named files must exist (a broken link is left out)
        if not paths and not pass_through:
            return None
        events = ingest(paths, **options)
        try:
            for event in events:
                last = event
                if isinstance(event, IngestProgress):
                    warned += event.warnings
                if pass_through:
                    yield event
                if stop.is_set() and not isinstance(event, IngestSummary):
                    break  # closing the run commits what it computed
            break
        except InputError:
            if attempt == 2 or all(os.path.exists(p) for p in paths):
                raise
        finally:
            events.close()
    if pass_through and not isinstance(last, IngestProgress):
        return last if isinstance(last, IngestSummary) else None
    return _commit(last, len(paths), at, time.monotonic() - t0, warned)


def _commit(last, files: int, at: datetime, elapsed: float, warned: list[str]) -> WatchCommit:
    if isinstance(last, IngestSummary):
        return WatchCommit(at, files, last.new, last.unchanged + last.duplicate, last.failed, last.failures,
                           elapsed, warned)
    done = last if isinstance(last, IngestProgress) else None
    return WatchCommit(at, files, done.new if done else 0, done.known if done else 0, done.failed if done else 0,
                       [], elapsed, warned, interrupted=True)


class _Once:
    """The model ingest asks for, loaded on the first call and kept for every later batch."""

    def __init__(self, model, weights_dir, device: str, precision: str):
        self.model, self.weights_dir, self.device, self.precision = model, weights_dir, device, precision
        self.loaded = None

    def __call__(self):
        if self.loaded is None:
            self.loaded = resolve_model(self.model, self.weights_dir, self.device, self.precision)
        return self.loaded


class Pending:
    """The files under the watched roots waiting to settle: path → (size, mtime_ns, when its
    size or mtime last changed, by `time.monotonic`)."""

    def __init__(self, roots: list[str], recursive: bool, settle: float):
        self.roots, self.recursive, self.settle = roots, recursive, settle
        self.exts = image_extensions()
        self.files: dict[str, tuple[int, int, float]] = {}
        self.gone: list[str] = []

    def first_pass(self) -> list[str]:
        """Every file a plain ingest would list; those changed within `settle` seconds wait."""
        now_ns, ready = time.time_ns(), []
        for source in discover(self.roots, self.recursive):
            path = os.path.abspath(source.path)
            st = stat(path)
            if st[0] is not None and now_ns - st[1] < self.settle * 1e9:
                self.files[path] = (*st, time.monotonic())
            else:
                ready.append(path)
        return ready

    def wanted(self, path: str) -> bool:
        """Whether a plain ingest of the roots would list `path` (as a file)."""
        if path in self.roots:
            return True
        parts = self._below(path)
        return parts is not None and (self.recursive or len(parts) == 1) \
            and os.path.splitext(path)[1].lower() in self.exts

    def _below(self, path: str) -> list[str] | None:
        """`path`'s parts below the root it is in, none of them hidden; None when it is in none."""
        for root in self.roots:
            if inside(path, root):
                parts = os.path.relpath(path, root).split(os.sep)
                return None if any(p.startswith(".") for p in parts) else parts
        return None

    def note(self, changes) -> None:
        """Take in a set of (change, path) from watchfiles."""
        from watchfiles import Change

        for change, path in sorted(changes, key=lambda c: c[1]):
            if change == Change.deleted:
                if self.files.pop(path, None) is None and self.wanted(path):
                    self.gone.append(path)
            elif os.path.isdir(path):
                if self.recursive and self._below(path) is not None:  # a folder made or moved in: walk it
                    for source in discover([path], True):
                        self._seen(os.path.abspath(source.path))
            elif self.wanted(path):
                self._seen(path)

    def _seen(self, path: str) -> None:
        st = stat(path)
        if st[0] is not None:
            self.files[path] = (*st, time.monotonic())

    def ready(self) -> list[str]:
        """The files whose size and mtime stayed the same for `settle` seconds (no longer waiting)."""
        now, ready = time.monotonic(), []
        for path, (size, mtime, since) in list(self.files.items()):
            st = stat(path)
            if st[0] is None:
                del self.files[path]  # gone before it settled
            elif st != (size, mtime):
                self.files[path] = (*st, now)
            elif now - since >= self.settle:
                ready.append(path)
                del self.files[path]
        return sorted(ready)

    def take_gone(self) -> list[str]:
        gone, self.gone = self.gone, []
        return gone
