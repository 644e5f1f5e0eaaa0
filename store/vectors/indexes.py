"""Indexes: an ANN index per embedding column, scalar indexes on every filter column.

Without an ANN index, `similar` is an exact (flat) cosine search over the rows passing the
prefilter. From `ANN_MIN_ROWS` rows on, an IVF index pays for itself; it is built by
`faramir index`, and by `ensure_indexes` (called after a rescore, and after an ingest that
committed something). Rows added or changed after the index was built are not in it: LanceDB searches them
exactly and merges the results, so answers stay complete; `ensure_indexes` folds them into the
index once they are more than `REINDEX_FRACTION` of it.

Scalar indexes (BTREE on confidence, aesthetic score and id; BITMAP on the two label columns, which
hold at most 9 and 21 distinct values) make the prefilter of a vector search, counts and `top`
cheap at any size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from faramir.store import schema
from faramir.store.cache import Cache, retrying
from faramir.store.errors import QueryError
from faramir.store.heads import registry
from faramir.store.schema import HeadColumns

ANN_MIN_ROWS = 100_000  # below this an exact filtered search takes well under 100 ms
REINDEX_FRACTION = 0.1  # fold unindexed rows into the ANN index past this share of the table
ROWS_PER_PARTITION = 4096  # IVF partition size (sqrt(N) would give 1000 tiny partitions at 1M)
NPROBES = 60  # IVF partitions searched per query (of ~244 at 1M rows). On bench/stage_two.py's
# clustered rows at 1M (re-rank 5 × k, 300 queries interleaved): 56 probes recall@10 0.965, 60 0.970,
# 64 0.976, each probe adding about 0.2 ms to a 15-17 ms query (the IVF_RQ scan is most of it);
# 48 gave 0.95, 24 0.83. 4x finer partitions needed far more probes for less recall.
REFINE_FACTOR = 5  # candidates re-ranked with the full vectors: 5 × k. At 1M rows recall is bound by the
# probes, not the re-rank (0.973 with 5 or 10; reading 50 vectors instead of 100 saves 2-3 ms);
# at 100K, where the probes cover every partition (24), 5 gives 0.981 against 10's 0.991.


def ann_config(num_rows: int):
    """The ANN index configuration for a table of `num_rows` (chosen by bench/stage_two.py)."""
    from lancedb.index import IvfRq

    return IvfRq(distance_type="cosine", num_partitions=max(1, num_rows // ROWS_PER_PARTITION))


def scalar_indexes(cols: HeadColumns | None) -> list[tuple[str, str]]:
    """(column, BTREE or BITMAP) for the filter columns of one head (None: head-independent ones).
    Heads reading one head's labels share that head's label indexes."""
    if cols is None:
        return [("id", "BTREE"), ("aesthetic_score", "BTREE")]
    return [(cols.confidence, "BTREE"), (cols.accept_label, "BITMAP"), (cols.reject_label, "BITMAP")]


def _indexed_columns(table) -> dict[str, object]:
    return {tuple(ix.columns)[0]: ix for ix in table.list_indices()}


def _scalar_config(kind: str):
    from lancedb.index import Bitmap, BTree

    return BTree() if kind == "BTREE" else Bitmap()


def _ann(table, column: str, replace: bool) -> str | None:
    existing = _indexed_columns(table).get(column)
    if existing is not None and not replace:
        return None
    table.create_index(column, config=ann_config(table.count_rows()), replace=True)
    return column


def ensure_indexes(
    cache: Cache,
    heads: Iterable[str] | None = None,
    embeddings: Iterable[str] = ("faramir",),
    min_rows: int = ANN_MIN_ROWS,
) -> list[str]:
    """Build what is missing: scalar indexes on the filter columns of `heads` (None: all) and on
    id and aesthetic score; the ANN index on each of `embeddings` once the table has `min_rows`;
    and fold unindexed rows into existing indexes once they are a tenth of the table.
    Returns the columns whose indexes were built or updated.

    Other processes may build the same indexes meanwhile (every ingest and rescore calls this): a
    build whose commit loses to another's starts over from what the table then holds."""
    if not cache.has_images():
        return []
    return retrying(lambda: _ensure_indexes(cache, heads, embeddings, min_rows))


def _ensure_indexes(cache: Cache, heads: Iterable[str] | None, embeddings: Iterable[str], min_rows: int) -> list[str]:
    table = cache.images()  # the latest version
    registered = {h["name"]: HeadColumns.of(h) for h in registry.heads(cache)}
    names = registered if heads is None else [h for h in heads if h in registered]
    wanted = scalar_indexes(None)
    for name in names:
        wanted += scalar_indexes(registered[name])
    present = _indexed_columns(table)
    done = []
    for column, kind in wanted:
        if column in table.schema.names and column not in present:
            table.create_index(column, config=_scalar_config(kind))
            done.append(column)
    rows = table.count_rows()
    stale = []
    for embedding in embeddings:
        column = schema.EMBEDDING_COLUMNS[embedding]
        ix = present.get(column)
        if ix is None:
            if rows >= min_rows and _ann(table, column, replace=False):
                done.append(column)
        elif ix.num_unindexed_rows > REINDEX_FRACTION * max(ix.num_indexed_rows, 1):
            stale.append(ix.name)
    for column, ix in present.items():  # scalar indexes fall behind after appends too
        if column not in schema.EMBEDDING_COLUMNS.values() and ix.num_unindexed_rows > 0:
            stale.append(ix.name)
    if stale:
        table.to_lance().optimize.optimize_indices(index_names=stale)
        done += stale
    return done


def index(
    db: str | os.PathLike | Cache | None = None,
    *,
    embeddings: Iterable[str] = ("faramir",),
    replace: bool = False,
) -> list[dict]:
    """Build the ANN index on each of `embeddings` (whatever the table's size; `replace` retrains an
    existing one) and every missing scalar index. Returns the table's indexes afterwards."""
    cache = Cache.open(db)
    cache.check_writable()
    for embedding in embeddings:
        if embedding not in schema.EMBEDDING_COLUMNS:
            raise QueryError(f"embedding {embedding!r}: use one of {', '.join(schema.EMBEDDING_COLUMNS)}")
        column = schema.EMBEDDING_COLUMNS[embedding]
        retrying(lambda: _ann(cache.images(), column, replace))  # another process may build it meanwhile
    ensure_indexes(cache, embeddings=embeddings, min_rows=0)
    return list_indexes(cache)


def list_indexes(db: str | os.PathLike | Cache | None = None) -> list[dict]:
    """The images table's indexes: name, column, type, indexed_rows, unindexed_rows."""
    cache = Cache.open(db)
    return [
        {"name": ix.name, "column": ", ".join(ix.columns), "type": ix.index_type,
         "indexed_rows": ix.num_indexed_rows, "unindexed_rows": ix.num_unindexed_rows}
        for ix in cache.images().list_indices()
    ]
