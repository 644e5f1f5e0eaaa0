"""Unreadable files recorded by ingest: listed by `faramir failures`, retried when they change."""

from __future__ import annotations

import os

from faramir.store import schema
from faramir.store.cache import Cache

FAILURE_COLUMNS = ("path", "reason", "failed_at", "size", "mtime_ns")


def failures(db: str | os.PathLike | Cache | None = None) -> list[dict]:
    """Recorded failures of the cache at `db`, by path. A failure stays recorded until its file
    reads fine; `faramir ingest` skips it while its size and mtime are unchanged, unless
    `retry_failed`."""
    rows = Cache.open(db).read(schema.FAILURES, list(FAILURE_COLUMNS)).to_pylist()
    return sorted(rows, key=lambda r: r["path"])
