"""Planning an ingest: which files to read, from a stat of each and the cache's records.

No image bytes are read and no model is loaded here (nor torch imported): an ingest that finds
nothing new costs a stat per file, two small column reads, and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from faramir.sources import Source
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion.events import FailedFile


@dataclass
class Entry:
    """What the stat pass knew about one file to read."""

    size: int | None
    mtime_ns: int | None
    prev_id: str | None  # content id of the files row for this path, if any
    was_failure: bool  # a failures row exists for this path


@dataclass
class Plan:
    found: int  # files named or discovered (each path once)
    to_read: list[Source]
    entries: list[Entry]  # parallel to to_read
    unchanged: int  # same path, size and mtime as cached, content still cached: not read
    skipped: list[FailedFile]  # recorded failures, unchanged since: not retried


def stat(path: str) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of `path`, or (None, None) when it cannot be stat'ed (the read says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def make_plan(cache: Cache | None, sources: Sequence[Source], known: set[str], retry_failed: bool) -> Plan:
    """Compare each source's size and mtime with the ``files`` and ``failures`` tables (of no
    cache yet: every file is read).

    A path whose size and mtime are unchanged, and whose content is still cached (`known`), is not
    read; nor is a recorded failure whose size and mtime are unchanged, unless `retry_failed`.
    Each source to read opens its absolute path and is reported, and stored, as that path's
    column text (`faramir.store.schema.path_to_column`)."""
    paths = list(dict.fromkeys(os.path.abspath(src.path) for src in sources))  # the cache keys on absolute paths
    stored = [schema.path_to_column(p) for p in paths]
    stats = [stat(p) for p in paths]
    if cache is None:
        files = pa.table({"path": pa.array([], pa.string()), "id": pa.array([], pa.string()),
                          "size": pa.array([], pa.int64()), "mtime_ns": pa.array([], pa.int64())})
        failed_rows = {}
    else:
        files = cache.read(schema.FILES, ["path", "id", "size", "mtime_ns"])
        failed_rows = {r["path"]: r for r in cache.read(schema.FAILURES).to_pylist()}  # usually a handful
    pos = pc.index_in(pa.array(stored, pa.string()), value_set=files["path"].combine_chunks())
    prev_ids = files["id"].take(pos).to_pylist()
    prev_sizes = files["size"].take(pos).to_pylist()
    prev_mtimes = files["mtime_ns"].take(pos).to_pylist()

    plan = Plan(len(paths), [], [], 0, [])
    for i, path in enumerate(paths):
        size, mtime = stats[i]
        failure = failed_rows.get(stored[i])
        if failure is not None and not retry_failed and (failure["size"], failure["mtime_ns"]) == (size, mtime):
            plan.skipped.append(FailedFile(stored[i], failure["reason"], failure["failed_at"], recorded_earlier=True))
            continue
        if (size is not None and prev_ids[i] in known
                and (prev_sizes[i], prev_mtimes[i]) == (size, mtime) and failure is None):
            plan.unchanged += 1
            continue
        plan.to_read.append(Source(path, stored[i]))
        plan.entries.append(Entry(size, mtime, prev_ids[i], failure is not None))
    return plan
