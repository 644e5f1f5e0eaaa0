"""Which files to read: upstream's enumeration of paths, folders and file lists.

No torch and no image decoding here: planning an ingest that finds nothing new costs a stat
per file and nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from faramir.errors import InputError


def image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclass(frozen=True)
class Source:
    """One file to process: `path` opens it, `display` is how it is reported (upstream's form)."""

    path: str
    display: str


def discover(
    paths: Sequence[str], recursive: bool = False, file_list: str | None = None
) -> list[Source]:
    """Upstream's file enumeration, sorted: a file as given; a directory's image files (its
    subtree with `recursive`); or, with `file_list`, its lines relative to the one directory.
    Hidden files and folders are skipped; files named explicitly are always tried.

    Every entry with an image extension that is not a folder is listed, FIFOs, sockets and
    broken links included, in both kinds of listing: reading one fails with the reason (see
    `faramir.files.open_regular`), so it is reported rather than silently left out."""
    if file_list is not None:
        if len(paths) > 1:
            raise InputError("file_list takes at most one path: the folder its entries are relative to")
        base = paths[0] if paths else "."
        try:
            with open(file_list, encoding="utf8") as f:
                entries = [line.rstrip("\r\n") for line in f if line.strip()]
        except OSError as ex:
            raise InputError(f"{file_list}: cannot read the file list ({ex.strerror})") from ex
        return [Source(os.path.join(base, e), e) for e in entries]

    exts = image_extensions()
    found: list[Source] = []
    for arg in paths:
        if os.path.isdir(arg):
            if recursive:
                for sub, dirs, files in os.walk(arg):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    for name in sorted(files):
                        if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                            full = os.path.join(sub, name)
                            found.append(Source(full, full))
            else:
                for name in sorted(os.listdir(arg)):
                    full = os.path.join(arg, name)
                    if (not name.startswith(".") and not os.path.isdir(full)
                            and os.path.splitext(name)[1].lower() in exts):
                        found.append(Source(full, full))
        elif os.path.exists(arg):
            found.append(Source(arg, arg))
        else:
            raise InputError(f"{arg}: no such file or directory")
    return found
