"""Every error and warning the cache gives on purpose: one class per kind, one line per message.

Errors derive from `faramir.errors.FaramirError`, which the CLI turns into one line on stderr and a
non-zero exit; warnings from `faramir.errors.FaramirWarning`, which it prints once, in one line.
Messages name the parameter or the file at fault, and the fix.
"""

from __future__ import annotations

import errno

from faramir.errors import FaramirError, FaramirWarning


class CacheError(FaramirError):
    """The cache cannot be opened or used as asked."""


class DiskFull(CacheError):
    """The disk holding the cache ran out of space (or quota) while a command wrote to it."""


class CacheRecovered(FaramirWarning):
    """A table's newest version was cut short (a power cut); the cache opened at the newest whole one."""


class NoCache(CacheError):
    """There is no cache at the given location yet."""


class NotACache(CacheError):
    """The location given holds something else than a faramir cache, or is a file."""


class ExpertsMismatch(CacheError):
    """The cache was built with other expert weights or preprocessing than the model given."""


class HeadError(CacheError):
    """A head cannot be applied to this cache, or is not in it."""


class PoolMismatch(HeadError):
    """The checkpoint's attention pool is not the one the cached FARAMIR embeddings came from."""


class QueryError(CacheError):
    """A query's arguments cannot be used."""


class NotCached(QueryError):
    """An image file that the cache has not seen (by path or content): ingest it first."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(message)


class UnknownImage(QueryError):
    """No cached image has this content id (or it lacks what was asked of it)."""


class ExportError(QueryError):
    """The export cannot be written as asked."""


class LabelsError(CacheError):
    """A labels file cannot be read or used."""


class TuningError(CacheError):
    """A finetune or evaluation cannot run as asked."""


class MapError(CacheError):
    """The map cannot be made, placed or read as asked."""


class RayError(FaramirError):
    """Ray cannot be used as asked: not installed, or no cluster at the address."""


class ReadOnlyCache(CacheError):
    """The cache's folder cannot be written: a read-only file system or folder."""


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a disk full, a quota used up
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "(os error 28)", "(os error 122)")
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_READ_ONLY_TEXT = ("Read-only file system", "(os error 30)", "Permission denied", "(os error 13)",
                   "Operation not permitted", "(os error 1)")


def storage_error(ex: BaseException, uri: str | None = None) -> CacheError | None:
    """The one-line error for an exception that says the cache's storage refused a write, from
    Python or from Lance (whose errors carry the OS error only in their text): `DiskFull`, or
    `ReadOnlyCache`; None for any other exception."""
    if (isinstance(ex, OSError) and ex.errno in FULL_ERRNOS) or any(t in str(ex) for t in _FULL_TEXT):
        where = f"{uri}: " if uri else ""
        return DiskFull(f"{where}the disk is full (no space left on device); what was committed is kept: "
                        f"free some space and run the command again to finish")
    refused = (isinstance(ex, OSError) and ex.errno in _READ_ONLY) or any(t in str(ex) for t in _READ_ONLY_TEXT)
    about_the_cache = uri is None or uri in str(ex) or uri in str(getattr(ex, "filename", None) or "")
    if refused and about_the_cache:  # (a file the command read, say, is no business of the cache's)
        return read_only(uri or "the cache", str(ex).split("\n")[0][:200])
    return None


def read_only(uri: str, why: str) -> ReadOnlyCache:
    """The error for a cache at `uri` that cannot be written (`why`: what refused)."""
    return ReadOnlyCache(f"{uri}: the cache cannot be written here ({why}); make its folder writable "
                         f"(chmod -R u+w, or remount the file system read-write), or copy it somewhere "
                         f"writable and pass that with --db; commands that only read work as they are")


class CacheWarning(FaramirWarning):
    """Something about the cache its user should know; the command goes on."""


class GeneratedCache(CacheWarning):
    """The cache was built from GENERATED weights: its scores mean nothing."""


class UnscoredRows(CacheWarning):
    """Some cached rows have no scores under the head a query reads (it leaves them out)."""
