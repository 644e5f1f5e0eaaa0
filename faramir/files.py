"""Small file helpers shared by every package: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it becomes `path` in one step.

    With `overwrite` the move is `os.replace`; without it, `os.link`, which raises FileExistsError
    if `path` exists (even if it appeared meanwhile), so nothing is ever clobbered. The temporary
    file is removed in every case, also when the block raises. It is not created in advance (the
    writer creates it, with the usual permissions); `suffix` ends its name, for writers that choose
    the format by extension.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in chunks: the content id of the cache."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
