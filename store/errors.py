"""Every error the cache raises on purpose: one class per kind of failure, one line per message.

They derive from `faramir.errors.FaramirError`, which the CLI turns into one line on stderr and a
non-zero exit. Messages name the parameter or the file at fault, and the fix.
"""

from __future__ import annotations

from faramir.errors import FaramirError


class CacheError(FaramirError):
    """The cache cannot be opened or used as asked."""


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
