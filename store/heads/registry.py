"""The heads registry: which heads' scores the cache holds, listing them, removing one.

A head's scores are six columns of the ``images`` table under a column prefix (`faramir.store.schema`);
the ``heads`` table maps each head name to its prefix. Scoring the cache with a head is
`faramir.store.heads.rescore.rescore` (it needs torch; nothing here does).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime

from faramir.store import schema
from faramir.store.cache import Cache, retrying
from faramir.store.errors import HeadError
from faramir.store.sql import sql_str


@dataclass(frozen=True)
class HeadInfo:
    """A registered head, as `faramir heads list` shows it."""

    name: str
    prefix: str  # its score columns are prefix_decision, prefix_confidence, ...
    fingerprint: str  # sha256 of its norm.* + head.* tensors
    pool: str  # "cache's", "head only" (no attn_pool.* in its file) or "OTHER"
    rows: int  # rows holding its scores
    source: str  # the checkpoint file it came from
    created_at: datetime
    scored_from: str | None = None  # after a rescore: the head whose v and f it was scored from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def describe(cache: Cache, head: dict) -> HeadInfo:
    """A `heads` table record (`Cache.head`) as a HeadInfo."""
    scored = 0
    if cache.has_images():
        ds = cache.dataset(schema.IMAGES)
        column = f"{head['prefix']}_confidence"
        scored = ds.count_rows(f"{column} IS NOT NULL") if column in ds.schema.names else 0
    pool = cache.get_meta("pool_fingerprint") or ""
    return HeadInfo(
        name=head["name"], prefix=head["prefix"], fingerprint=head["fingerprint"],
        pool="head only" if not head["pool_fingerprint"] else
             "cache's" if head["pool_fingerprint"] == pool else "OTHER",
        rows=scored, source=head["source"], created_at=head["created_at"],
    )


def drop_prefix(cache: Cache, prefix: str) -> None:
    """Drop the score columns under `prefix` (metadata only: their data goes at the next compaction)."""

    def drop():
        table = cache.images()
        present = [c for c in schema.score_column_names(prefix) if c in table.schema.names]
        if present:
            table.drop_columns(present)

    retrying(drop)  # an ingest appending meanwhile makes the commit conflict


def list_heads(db: str | os.PathLike | Cache | None = None) -> list[HeadInfo]:
    """Registered heads, oldest first."""
    cache = Cache.open(db)
    return [describe(cache, h) for h in cache.heads()]


def remove_head(name: str, db: str | os.PathLike | Cache | None = None) -> HeadInfo:
    """Unregister head `name` and drop its score columns; returns what was removed. The default
    head (`faramir-v1`) is refused: every query reads it unless told otherwise, and ingest
    registers it with the first images only, so a cache without it could not get it back."""
    if name == schema.DEFAULT_HEAD:
        raise HeadError(f"{name} is the default head of every query and scores every new image at ingest; "
                        f"it cannot be removed. To replace its scores, run "
                        f"'faramir rescore --head FILE --name {name}'")
    cache = Cache.open(db)
    removed = describe(cache, cache.head(name))
    cache.table(schema.HEADS).delete(f"name = {sql_str(name)}")
    if cache.has_images():
        drop_prefix(cache, removed.prefix)
    return removed
