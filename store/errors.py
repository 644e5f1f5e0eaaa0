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


class RayError(FaramirError):
    """Ray cannot be used as asked: not installed, or no cluster at the address."""


_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "(os error 28)", "(os error 122)")


def disk_full(ex: BaseException, uri: str | None = None) -> DiskFull | None:
    """`DiskFull` for an exception that says the disk is full, from Python or from Lance (whose
    errors carry the OS error only in their text), else None."""
    if not (isinstance(ex, OSError) and ex.errno in _FULL) and not any(t in str(ex) for t in _FULL_TEXT):
        return None
    where = f"{uri}: " if uri else ""
    return DiskFull(f"{where}the disk is full (no space left on device); what was committed is kept: "
                    f"free some space and run the command again to finish")


class CacheWarning(FaramirWarning):
    """Something about the cache its user should know; the command goes on."""


class GeneratedCache(CacheWarning):
    """The cache was built from GENERATED weights: its scores mean nothing."""


class UnscoredRows(CacheWarning):
    """Some cached rows have no scores under the head a query reads (it leaves them out)."""
