"""The heads registry: which heads' scores the cache holds and where their columns are; listing,
registering and removing heads.

A head's scores are six columns of the ``images`` table (`faramir.store.schema.SCORE_TYPES`); its
``heads`` record names the column prefix of its decision and confidence, and the prefix its labels,
class logits v and free units f are read under (`faramir.store.schema.HeadColumns`): its own, or,
for a head scored from another head's v and f (a finetune of it), that head's. Every reader
resolves a head's columns through here. Scoring the cache with a head is
`faramir.store.heads.rescore.rescore` (it needs torch; nothing here does).

Columns are dropped only when no registered head reads them: removing (or rescoring) a head whose
v and f a finetuned head reads leaves those columns in place for it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from faramir.store import schema
from faramir.store.cache import Cache, retrying
from faramir.store.errors import HeadError
from faramir.store.schema import HeadColumns
from faramir.store.sql import sql_str

RECORD_COLUMNS = [f.name for f in schema.HEADS_SCHEMA if f.name != "checkpoint"]


# -- records ------------------------------------------------------------------------------------


def heads(cache: Cache) -> list[dict]:
    """Registered heads (records without checkpoint bytes), oldest first."""
    rows = cache.read(schema.HEADS, RECORD_COLUMNS).to_pylist()
    return sorted(rows, key=lambda r: r["created_at"])


def head(cache: Cache, name: str) -> dict:
    """The record of head `name` (without checkpoint bytes). Every query resolves its head
    through this, so it is kept per version of the heads table (reading it took 1-4 ms, a fifth
    of a nearest-neighbour search; a rescore's switch makes a new version)."""
    ds = cache.dataset(schema.HEADS)
    rows = cache.kept("head", ds, name, lambda: ds.to_table(
        columns=RECORD_COLUMNS, filter=f"name = {sql_str(name)}").to_pylist())
    if rows:
        return dict(rows[0])
    known = ", ".join(h["name"] for h in heads(cache)) or "none"
    raise HeadError(f"no head named {name!r} in {cache.uri} (known: {known}); "
                    f"score one with 'faramir rescore --head FILE --name {name}'")


def columns(cache: Cache, name: str) -> HeadColumns:
    """Where head `name`'s six score columns are."""
    return HeadColumns.of(head(cache, name))


def checkpoint(cache: Cache, name: str) -> bytes:
    """The safetensors bytes (norm.* + head.*) stored with head `name`."""
    head(cache, name)  # raises with the list of known heads
    return cache.read(schema.HEADS, ["checkpoint"], f"name = {sql_str(name)}").column("checkpoint")[0].as_py()


def register(cache: Cache, *, name: str, columns: HeadColumns, fingerprint: str, pool_fingerprint: str,
             source: str, checkpoint: bytes, replace: bool = True) -> dict:
    """Register head `name`, whose scores are at `columns`, in one commit: the moment its scores
    become the ones every reader sees. With `replace` false an existing head of that name stays.
    Returns the record (without checkpoint bytes)."""
    from faramir.checkpoints import frozen_fingerprint, head_state_from_bytes

    record = {"name": name, "prefix": columns.prefix, "fingerprint": fingerprint,
              "pool_fingerprint": pool_fingerprint, "source": source,
              "created_at": datetime.now(timezone.utc), "checkpoint": checkpoint,
              "frozen_fingerprint": frozen_fingerprint(head_state_from_bytes(checkpoint)),
              "shared_prefix": columns.shared if columns.shares else None}
    merge = cache.table(schema.HEADS).merge_insert("name")
    if replace:
        merge = merge.when_matched_update_all()
    merge.when_not_matched_insert_all().execute(pa.Table.from_pylist([record], schema=schema.HEADS_SCHEMA))
    return {k: v for k, v in record.items() if k != "checkpoint"}


# -- listing and removing -----------------------------------------------------------------------


@dataclass(frozen=True)
class HeadInfo:
    """A registered head, as `faramir heads list` shows it."""

    name: str
    prefix: str  # its decision and confidence are prefix_decision, prefix_confidence
    fingerprint: str  # sha256 of its norm.* + head.* tensors
    pool: str  # "cache's", "head only" (no attn_pool.* in its file) or "OTHER"
    rows: int  # rows holding its scores
    source: str  # the checkpoint file it came from
    created_at: datetime
    scored_from: str | None = None  # the head whose v and f (and labels) it reads; None: its own

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def describe(cache: Cache, record: dict) -> HeadInfo:
    """A ``heads`` record as a HeadInfo."""
    cols = HeadColumns.of(record)
    scored = 0
    if cache.has_images():
        ds = cache.dataset(schema.IMAGES)
        scored = ds.count_rows(f"{cols.confidence} IS NOT NULL") if cols.confidence in ds.schema.names else 0
    pool = cache.get_meta("pool_fingerprint") or ""
    scored_from = None
    if cols.shares:
        owner = [h["name"] for h in heads(cache) if h["prefix"] == cols.shared]
        scored_from = owner[0] if owner else f"a head since removed or rescored ({cols.shared}_*)"
    return HeadInfo(
        name=record["name"], prefix=record["prefix"], fingerprint=record["fingerprint"],
        pool="head only" if not record["pool_fingerprint"] else
             "cache's" if record["pool_fingerprint"] == pool else "OTHER",
        rows=scored, source=record["source"], created_at=record["created_at"], scored_from=scored_from,
    )


def drop_unread(cache: Cache, gone: HeadColumns) -> None:
    """Drop the score columns of a head no longer registered under `gone` (removed, or rescored
    under a new prefix) that no registered head reads: its decision and confidence, and its labels,
    v and f (and those it read from another head) unless a registered head reads them. Metadata
    only: their data goes at the next compaction."""
    read = {HeadColumns.of(h).shared for h in heads(cache)}
    doomed = [f"{gone.prefix}_{s}" for s in schema.OWN_SCORES]
    for prefix in {gone.prefix, gone.shared} - read:
        doomed += [f"{prefix}_{s}" for s in schema.SHARED_SCORES]

    def drop():
        table = cache.images()
        present = [c for c in doomed if c in table.schema.names]
        if present:
            table.drop_columns(present)

    if cache.has_images():
        retrying(drop)  # an ingest appending meanwhile makes the commit conflict


def list_heads(db: str | os.PathLike | Cache | None = None) -> list[HeadInfo]:
    """Registered heads, oldest first."""
    cache = Cache.open(db)
    return [describe(cache, h) for h in heads(cache)]


def remove_head(name: str, db: str | os.PathLike | Cache | None = None) -> HeadInfo:
    """Unregister head `name` and drop the score columns no other head reads; returns what was
    removed. The default head (`faramir-v1`) is refused: every query reads it unless told
    otherwise, and ingest registers it with the first images only, so a cache without it could
    not get it back."""
    if name == schema.DEFAULT_HEAD:
        raise HeadError(f"{name} is the default head of every query and scores every new image at ingest; "
                        f"it cannot be removed. To replace its scores, run "
                        f"'faramir rescore --head FILE --name {name}'")
    cache = Cache.open(db)
    record = head(cache, name)
    cache.check_writable()
    removed = describe(cache, record)
    cache.table(schema.HEADS).delete(f"name = {sql_str(name)}")
    drop_unread(cache, HeadColumns.of(record))
    return removed
