"""Small file helpers shared by every package: atomic writes, reading regular files only, and
content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from faramir.errors import NotRegularFile

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


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


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file (symlinks followed); else
    NotRegularFile (an OSError) saying what it is.

    The open itself never blocks: it is non-blocking, so a FIFO named like an image (which a
    plain open would wait on until some process writes to it, forever) is opened, seen for what
    it is by fstat, and closed unread. Reads of a regular file ignore the flag."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError as ex:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise ex from None
        _refuse_irregular(mode)  # a socket cannot even be opened (ENXIO): say what it is
        raise
    try:
        _refuse_irregular(os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_irregular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a file")
        raise NotRegularFile(f"not a regular file ({kind}); only regular files are read")


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in chunks: the content id of the cache."""
    with open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


CHUNK = 1 << 20  # bytes read at a time while hashing


def copy_verified(path: str | os.PathLike, out: BinaryIO | None, content_id: str, size: int) -> bytes | None:
    """The bytes of `path` if they are still the content `content_id` (its sha256) of `size`
    bytes, hashed while they are read; written to `out` as they come when given (then b"" is
    returned), else kept and returned. None when the file cannot be read or is not that content
    any more (another size is seen before a byte is read) or not a regular file; what went to
    `out` then is the caller's to discard. Never reads past `size` + 1 bytes. An error writing to
    `out` (a full disk) is raised: it is no fault of the file."""
    try:
        f = open_regular(path)
    except OSError:
        return None
    with f:
        try:
            if os.fstat(f.fileno()).st_size != size:
                return None
        except OSError:
            return None
        digest, kept, seen = hashlib.sha256(), [], 0
        while True:
            try:
                chunk = f.read(min(CHUNK, size + 1 - seen))
            except OSError:
                return None
            if not chunk:
                break
            seen += len(chunk)
            if seen > size:
                return None  # it grew while being read
            digest.update(chunk)
            if out is None:
                kept.append(chunk)
            else:
                out.write(chunk)
    if seen != size or digest.hexdigest() != content_id:
        return None
    return b"".join(kept)


KERNEL_FILE_SYSTEMS = frozenset({  # the kernel's views of itself: no place to write files into
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "configfs", "pstore", "bpf", "efivarfs", "fusectl", "mqueue", "binfmt_misc", "autofs", "hugetlbfs"})


def inside(path: str, folder: str) -> bool:
    """Whether `path` lies below `folder` (both absolute, normalised; the folder itself is not)."""
    return path.startswith(folder.rstrip("/") + "/")


def file_system_type(path: str | os.PathLike) -> str | None:
    """The type of the file system `path` is on (or would be created on), as the kernel names it
    ("ext4", "proc", ...), from /proc/self/mountinfo; None where that cannot be read."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, found = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split(" ")
        if len(fields) < 5 or not right:
            continue
        point = fields[4].replace("\\040", " ")
        if (target == point or inside(target, point)) and len(point) >= len(best):
            best, found = point, right.split(" ")[0]
    return found
