"""Recognising cached content by its hash before the model loads: known content never wakes it.

A renamed or copied file is a new path to the plan, so it has to be read; if its content is cached
already it needs nothing more. Content can only be cached under its own size, so a planned file
whose size no cached image has is new for certain and is left to the decode workers, read once.
The others are read and hashed here (by threads: reading and hashing leave the interpreter free),
and those whose content is cached are handed to the run as recognised: a run that finds nothing
else never loads the model, nor even imports torch. A candidate that turns out new is read again
by its decode worker, from the page cache.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from faramir.devices import usable_cores
from faramir.reading import Item, hash_file
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion.plan import Plan

THREADS_PER_CORE = 2  # reads wait on the disk as often as hashing keeps a core busy


def recognise(cache: Cache | None, plan: Plan, known: set[str]) -> tuple[list[Item], list[int]]:
    """(the plan's files whose content is cached, read and hashed here; the indexes into
    `plan.to_read` of the rest, to decode)."""
    everything = list(range(len(plan.to_read)))
    if cache is None or not known or not plan.to_read:
        return [], everything
    sizes = cache.read(schema.IMAGES, ["size"]).column("size").combine_chunks()
    planned = pa.array([entry.size for entry in plan.entries], pa.int64())  # None: not stat'ed, left to the run
    hits = pc.is_in(planned, value_set=sizes, skip_nulls=True).to_pylist()
    candidates = [i for i, hit in enumerate(hits) if hit]
    if not candidates:
        return [], everything
    with ThreadPoolExecutor(max(1, usable_cores() * THREADS_PER_CORE)) as pool:
        hashed = list(pool.map(lambda i: hash_file(i, plan.to_read[i]), candidates))
    recognised = [it for it in hashed if it.sha256 in known]
    for it in recognised:
        it.known = True
    taken = {it.index for it in recognised}
    return recognised, [i for i in everything if i not in taken]
