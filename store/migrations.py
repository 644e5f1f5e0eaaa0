"""Schema migrations: a cache made by an older faramir is brought to `faramir.store.schema.SCHEMA_VERSION`
when it is opened (`faramir.store.cache.Cache.open`), oldest step first.

Each step is one commit (a column appears with its values, or not at all), so a crash leaves the
cache at the old version, and two processes opening it at once are both fine: the one whose commit
loses finds the work done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from faramir.store import schema

if TYPE_CHECKING:
    from faramir.store.cache import Cache


def migrate(cache: Cache, version: int) -> None:
    """Bring `cache`, at schema `version`, to the current version."""
    if version < 2:
        _add_frozen_fingerprints(cache)
    # 2 → 3 rewrites nothing: no older cache holds a path that is not UTF-8 (see faramir.store.schema)
    cache.set_meta(schema_version=str(schema.SCHEMA_VERSION))


def _add_frozen_fingerprints(cache: Cache) -> None:
    """1 → 2: every heads row gets its frozen fingerprint, computed from its stored checkpoint.
    Score columns written under version 1 have no P_free: those heads are never the source of a
    decision-layers-only rescore (`faramir.store.heads.rescore`), and ingest writes the columns they have."""
    import lance

    from faramir.checkpoints import frozen_fingerprint, head_state_from_bytes

    name = "frozen_fingerprint"
    if name in cache.dataset(schema.HEADS).schema.names:
        return
    out = pa.schema([schema.HEADS_SCHEMA.field(name)])

    def fingerprints(batch: pa.RecordBatch) -> pa.RecordBatch:
        values = [frozen_fingerprint(head_state_from_bytes(data)) if data else None
                  for data in batch.column("checkpoint").to_pylist()]
        return pa.RecordBatch.from_arrays([pa.array(values, pa.string())], schema=out)

    try:
        cache.dataset(schema.HEADS).add_columns(lance.udf.BatchUDF(fingerprints, out),
                                                read_columns=["checkpoint"])
    except Exception:
        if name not in cache.dataset(schema.HEADS).schema.names:
            raise
        # another process opening this cache migrated it first
