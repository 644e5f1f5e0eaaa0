"""What every command shares: error handling, stderr notices (the library's warnings among them)
and progress bars (stderr only, so stdout stays pipeable). Output on stdout is `faramir.cli.output`."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from faramir.cli.output import printable
from faramir.errors import FaramirError, FaramirWarning

stderr = Console(stderr=True, highlight=False)
T = TypeVar("T")

EXIT_ERROR = 1  # the command could not do its job
EXIT_PARTIAL = 3  # it did its job but some inputs were unreadable (reported on stderr)
SHOWN = 20  # lines a command prints of a list of skipped inputs; the rest as a count


def fail(message: str, code: int = EXIT_ERROR):
    stderr.print(printable(f"Error: {message}"), markup=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn our exceptions into one line on stderr and a non-zero exit, and show each warning the
    library gives (`FaramirWarning`) once, as one line on stderr, when it is given; a full disk or
    a cache that cannot be written, whichever layer meets it, is one line too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():  # restores the filters and showwarning afterwards
                warnings.simplefilter("always", FaramirWarning)
                warnings.showwarning = _show_once(warnings.showwarning)
                return fn(*args, **kwargs)
        except FaramirError as ex:
            fail(str(ex))
        except KeyboardInterrupt:
            stderr.print("Interrupted.", markup=False)
            raise typer.Exit(130)
        except Exception as ex:
            from faramir.store.cache import default_db
            from faramir.store.errors import storage_error

            refused = storage_error(ex, kwargs.get("db") or default_db())
            if refused is None:
                raise
            fail(str(refused))

    return wrapper


def _show_once(others: Callable) -> Callable:
    """A `warnings.showwarning` printing our warnings as `warn` lines, each text once; others as before."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, FaramirWarning):
            return others(message, category, filename, lineno, file, line)
        if str(message) not in shown:
            shown.add(str(message))
            warn(str(message))

    return show


def warn(message: str) -> None:
    stderr.print(printable(f"Warning: {message}"), markup=False, soft_wrap=True)


def note(message: str) -> None:
    """Advice, not a problem: one line on stderr."""
    stderr.print(printable(f"Note: {message}"), markup=False, soft_wrap=True)


def say_first(items: Sequence[T], line: Callable[[T], str], more: str, say: Callable[[str], None] = warn) -> None:
    """`say` the line of each of the first SHOWN `items`, then how many `more` there were."""
    for item in items[:SHOWN]:
        say(line(item))
    if len(items) > SHOWN:
        say(f"… and {len(items) - SHOWN} more {more}")


def failed_files(failures) -> None:
    """The first of the files an ingest could not read, each with why; then how many more."""
    say_first(failures, lambda f: f"Failed: {f.path}: {f.reason}" + (
        " (unchanged since it failed before; not retried)" if f.recorded_earlier else ""),
        "failed files: 'faramir failures' lists them all.", note)


def warn_generated(info) -> None:
    """Say loudly that scores from generated weights mean nothing."""
    if info is not None and info.generated:
        stderr.print(
            f"WARNING: {info.weights_dir} holds {info.generated}. "
            "These are NOT the FARAMIR weights.",
            style="bold red", markup=False, soft_wrap=True,
        )


def progress_bar() -> Progress:
    """A progress display on stderr, drawn only on a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
        disable=not stderr.is_terminal,
    )


def track(items: Iterable[T], total: int | None, description: str, show: bool = True) -> Iterator[T]:
    """Yield `items`, advancing a progress bar on stderr (only on a terminal)."""
    if not show or not stderr.is_terminal:
        yield from items
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, rate="")
        for item in items:
            bar.advance(task, 1)
            t = bar.tasks[task]
            speed = t.finished_speed or t.speed
            bar.update(task, rate=f"{speed:.2f} img/s" if speed else "")
            yield item


class Bar:
    """A progress callback `(done, total)` for the library, drawn as a bar on stderr."""

    def __init__(self, description: str):
        self.description = description

    def __enter__(self):
        self.bar = progress_bar()
        self.bar.__enter__()
        self.task = None
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(self.description, total=total, rate="")
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


class bars_by_name:
    """A progress callback `(name, done, total)`: a bar per name on stderr, labelled `prefix` and
    the name (the files of a download, the stages of a map)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __enter__(self):
        self._bar = progress_bar()
        self._tasks: dict[str, int] = {}
        self._bar.__enter__()
        return self

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._bar.add_task(f"{self.prefix}{name}", total=total, rate="")
        self._bar.update(self._tasks[name], completed=done, total=total)

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


def download_progress() -> bars_by_name:
    """The progress of weight downloads: a bar per file."""
    return bars_by_name("download ")
