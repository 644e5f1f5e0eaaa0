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
from store import schema
from store.db import Cache
from store.ingestion.events import FailedFile


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


def make_plan(cache: Cache, sources: Sequence[Source], known: set[str], retry_failed: bool) -> Plan:
    """Compare each source's size and mtime with the ``files`` and ``failures`` tables.

    A path whose size and mtime are unchanged, and whose content is still cached (`known`), is not
    read; nor is a recorded failure whose size and mtime are unchanged, unless `retry_failed`."""
    paths = list(dict.fromkeys(os.path.abspath(src.path) for src in sources))  # the cache keys on absolute paths
    stats = [stat(p) for p in paths]
    files = cache.read(schema.FILES, ["path", "id", "size", "mtime_ns"])
    pos = pc.index_in(pa.array(paths, pa.string()), value_set=files["path"].combine_chunks())
    prev_ids = files["id"].take(pos).to_pylist()
    prev_sizes = files["size"].take(pos).to_pylist()
    prev_mtimes = files["mtime_ns"].take(pos).to_pylist()
    failed_rows = {r["path"]: r for r in cache.read(schema.FAILURES).to_pylist()}  # usually a handful

    plan = Plan(len(paths), [], [], 0, [])
    for i, path in enumerate(paths):
        size, mtime = stats[i]
        failure = failed_rows.get(path)
        if failure is not None and not retry_failed and (failure["size"], failure["mtime_ns"]) == (size, mtime):
            plan.skipped.append(FailedFile(path, failure["reason"], failure["failed_at"], recorded_earlier=True))
            continue
        if (size is not None and prev_ids[i] in known
                and (prev_sizes[i], prev_mtimes[i]) == (size, mtime) and failure is None):
            plan.unchanged += 1
            continue
        plan.to_read.append(Source(path, path))
        plan.entries.append(Entry(size, mtime, prev_ids[i], failure is not None))
    return plan
