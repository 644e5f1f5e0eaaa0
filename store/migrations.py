"""Schema migrations: a cache made by an older faramir is brought to
`faramir.store.schema.SCHEMA_VERSION` when it is opened (`faramir.store.cache.Cache.open`), oldest
step first.

- 1 → 2 added ``heads.frozen_fingerprint`` (computed for existing heads from their checkpoint)
  and the P_free columns (written for heads scored from then on).
- 2 → 3 (paths that are not UTF-8 as ``file:`` URIs): an older cache cannot hold such a path (its
  ingest failed on them) and its paths are absolute, so every stored path already means the same
  under version 3: only the version is raised, so that an older faramir refuses a cache whose
  ``file:`` paths it would take literally. Older versions recorded the experts fingerprint with
  the trunk's file bytes; ingest recognises such a cache
  (`faramir.weights.file_bytes_experts_fingerprint`).
- 3 → 4 added ``heads.shared_prefix`` (null for every existing head: each reads its own columns),
  so that a head scored from another head's v and f stores only its decision and confidence.
- 4 → 5 added the ``layout`` and ``layout_model`` tables (the map): `Cache.open` makes a missing
  table, empty, as it makes every table; no existing row changes. The version is raised all the
  same: an older faramir would ingest rows without placing them on the map.

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
        _add_heads_column(cache, "frozen_fingerprint", _frozen_fingerprints, ["checkpoint"])
    # 2 → 3 rewrites nothing: no older cache holds a path that is not UTF-8
    if version < 4:
        _add_heads_column(cache, "shared_prefix", lambda batch: [None] * batch.num_rows, ["name"])
    # 4 → 5 rewrites nothing: the layout tables were made, empty, before the version was read
    cache.set_meta(schema_version=str(schema.SCHEMA_VERSION))


def _frozen_fingerprints(batch: pa.RecordBatch) -> list[str | None]:
    """1 → 2: every heads row's frozen fingerprint, computed from its stored checkpoint. Score
    columns written under version 1 have no P_free: those heads are never the source of a
    decision-layers-only rescore (`faramir.store.heads.rescore`), and ingest writes the columns
    they have."""
    from faramir.checkpoints import frozen_fingerprint, head_state_from_bytes

    return [frozen_fingerprint(head_state_from_bytes(data)) if data else None
            for data in batch.column("checkpoint").to_pylist()]


def _add_heads_column(cache: Cache, name: str, values, read: list[str]) -> None:
    """Add the heads table's column `name` (as `faramir.store.schema.HEADS_SCHEMA` declares it),
    its values `values(batch)` of the columns `read`, in one commit; nothing if it is there."""
    import lance

    if name in cache.dataset(schema.HEADS).schema.names:
        return
    out = pa.schema([schema.HEADS_SCHEMA.field(name)])

    def column(batch: pa.RecordBatch) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array(values(batch), out.field(0).type)], schema=out)

    try:
        cache.dataset(schema.HEADS).add_columns(lance.udf.BatchUDF(column, out), read_columns=read)
    except Exception:
        if name not in cache.dataset(schema.HEADS).schema.names:
            raise
        # another process opening this cache migrated it first
