"""Where an export may write: refused, before anything is written, inside the cache itself (its
folder or any table's) and on the kernel's own file systems (/proc, /sys, ...); and any error
writing there is one line naming the destination, not the cache."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from faramir.files import KERNEL_FILE_SYSTEMS, file_system_type, inside
from faramir.store.errors import FULL_ERRNOS, ExportError


def check_destination(dest: Path, cache_uri: str) -> None:
    """Raise ExportError if `dest` is inside the cache at `cache_uri` or on a kernel file system."""
    where = os.path.realpath(dest)
    if "://" not in cache_uri:
        cache = os.path.realpath(cache_uri)
        if where == cache or inside(where, cache):
            raise ExportError(f"{dest}: inside the cache {cache_uri}; export to a folder outside it")
    kind = file_system_type(dest)
    if kind in KERNEL_FILE_SYSTEMS:
        raise ExportError(f"{dest}: on the kernel's {kind} file system, which holds no files of yours; "
                          f"export to a folder on a disk")


@contextlib.contextmanager
def writing_to(dest: Path, result) -> Iterator[None]:
    """Any OSError inside as one ExportError naming `dest` (a full disk there, a folder it may not
    write), saying how much of the export `result` is done: what was written stays whole."""
    try:
        yield
    except ExportError:
        raise
    except OSError as ex:
        done = f"{result.written} of {result.rows} written, each whole" if result.rows else "nothing written"
        if ex.errno in FULL_ERRNOS:
            raise ExportError(f"{dest}: the disk is full ({done}); free some space there and run the "
                              f"export again: it skips what is already there") from None
        raise ExportError(f"{dest}: cannot write there ({ex.strerror or ex}; {done}); choose another "
                          f"destination") from None
