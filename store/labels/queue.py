"""What to label next (`faramir queue`): the unlabelled images whose label would teach a head most,
spread over the collection.

Every unlabelled image that passes the filter gets a priority from three signals, each in [0, 1]
and each 1 where a label settles the most:

- closeness to the threshold: 4·σ(m)·σ(−m), m = d − logit(T), from the head's decision logit d
  (1 at the threshold, 0.42 two logits away, 0.07 five away);
- disagreement with a second head (`vs`): |σ(d − logit T) − σ(d_vs − logit T)|, near 1 where
  both heads are sure and say opposite things: one of them is wrong;
- an ambiguous reason: 2·σ(−g), g the gap between the two largest reason logits on the side of
  the decision (1 when two reasons tie).

priority = closeness + disagreement + ½·ambiguity (a finetune learns the decision, so the
decision's signals weigh most). The most uncertain `pool` images (4 × `limit`, at least 100)
then go through a farthest-point selection on the embedding: the first is the highest
priority, each next one maximises priority × its cosine distance to the nearest image already
chosen, so a cluster of near-copies gives one image, not fifty. The queue is the selection's
order. Nothing here writes: labels given to its images are ordinary labels
(`faramir.store.labels.table`), and after a finetune the queue under the new head is another.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from faramir.config import N_ACCEPT
from faramir.store import limits, schema
from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.filters import Filter
from faramir.store.heads.columns import head_columns, on_head, read_columns, results
from faramir.store.schema import HeadColumns, vectors
from faramir.store.sql import id_filters

REASON_WEIGHT = 0.5  # an ambiguous reason weighs half the decision's signals
POOL_FACTOR = 4  # the pool farthest-point selection draws from: this × limit, ...
MIN_POOL = 100  # ... at least this many
SIGNALS = ("uncertainty", "disagreement", "ambiguity")


@dataclass(frozen=True)
class Queue:
    """The images to label next, in the order to label them (`queue`)."""

    head: str
    vs: str | None  # the second head whose disagreement counts, if any
    threshold: float
    passing: int  # images passing the filter, labelled ones included
    rows: pa.Table  # result rows, then priority, uncertainty, disagreement, ambiguity, spread

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "rows": self.rows.to_pylist()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # never overflows


def signals(decision: np.ndarray, logits: np.ndarray, threshold: float,
            vs_decision: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{uncertainty, disagreement, ambiguity, priority} per row from a head's decision logits
    (N,), its reason logits v (N, 30) and a second head's decision logits (N,) or None."""
    t = min(max(threshold, 1e-7), 1 - 1e-7)
    shift = math.log(t / (1 - t))
    d = np.nan_to_num(decision.astype(np.float64), nan=np.inf)  # a NaN decision teaches nothing
    p = _sigmoid(d - shift)
    uncertainty = 4.0 * p * (1.0 - p)
    if vs_decision is None:
        disagreement = np.zeros_like(p)
    else:
        other = _sigmoid(vs_decision.astype(np.float64) - shift)
        disagreement = np.nan_to_num(np.abs(p - other), nan=0.0)
    accepted = p > 0.5  # upstream's rule at T, up to float32 rounding of the confidence
    top2 = np.zeros((len(d), 2), np.float64)
    for mask, part in ((accepted, logits[:, :N_ACCEPT]), (~accepted, logits[:, N_ACCEPT:])):
        if mask.any():
            top2[mask] = -np.sort(-part[mask], axis=1)[:, :2]  # the two largest reason logits of that side
    ambiguity = np.nan_to_num(2.0 * _sigmoid(-(top2[:, 0] - top2[:, 1])), nan=0.0)
    priority = uncertainty + disagreement + REASON_WEIGHT * ambiguity
    return {"uncertainty": uncertainty, "disagreement": disagreement, "ambiguity": ambiguity, "priority": priority}


def farthest_points(priority: np.ndarray, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the indices of `k` rows in the order chosen, each one's cosine distance to the nearest
    row chosen before it): the highest priority first, then each time the row maximising
    priority × that distance (ties: higher priority, then lower index)."""
    n = len(priority)
    k = min(k, n)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    nearest = np.full(n, np.inf)
    chosen, spread = [], []
    taken = np.zeros(n, bool)
    for _ in range(k):
        gain = np.where(taken, -np.inf, priority * np.minimum(nearest, 2.0))
        best = np.flatnonzero(gain == gain.max())
        pick = int(best[np.argmax(priority[best])]) if len(best) > 1 else int(best[0])
        chosen.append(pick)
        spread.append(float(min(nearest[pick], 2.0)))
        taken[pick] = True
        nearest = np.minimum(nearest, 1.0 - unit @ unit[pick])
    return np.asarray(chosen, np.int64), np.asarray(spread)


def queue(
    db: str | os.PathLike | Cache | None = None,
    *,
    limit: int = 50,
    vs: str | None = None,
    ids: list[str] | None = None,
    embedding: str = "faramir",
    filter: Filter | None = None,
    **filters,
) -> Queue:
    """The `limit` unlabelled images, among those passing the filter (its head and threshold are
    the queue's) and, given `ids`, among those, that a label would teach the head most, spread
    over the `embedding` (faramir or siglip); `vs`: a second head whose disagreement counts.
    Row columns: `faramir.store.heads.columns.results`, then priority, the three signals and
    spread (the cosine distance to the nearest image queued before it)."""
    limits.check("limit", limit, 1, limits.MAX_QUEUE, QueryError)
    if embedding not in schema.EMBEDDING_COLUMNS:
        raise QueryError(f"embedding {embedding!r}: use one of {', '.join(schema.EMBEDDING_COLUMNS)}")
    f = Filter.of(filter, **filters)
    if vs is not None and vs == f.head:
        raise QueryError(f"--vs names the queue's own head {vs!r}; give another head, or none")
    cache = Cache.open(db)
    vs_cols = head_columns(cache, vs) if vs is not None else None
    labelled = set(cache.read(schema.LABELS, ["id"]).column("id").to_pylist())
    return on_head(cache, f.head, lambda cols, ds: _queue(ds, cols, vs_cols, f, labelled, ids, limit,
                                                        schema.EMBEDDING_COLUMNS[embedding], vs))


def _queue(ds, cols: HeadColumns, vs_cols: HeadColumns | None, f: Filter, labelled: set[str],
           ids: list[str] | None, limit: int, embedding: str, vs: str | None) -> Queue:
    where = f.where(cols)
    read = [cols.decision, cols.logits, "_rowoffset"]
    if vs_cols is not None:
        where += f" AND {vs_cols.confidence} IS NOT NULL"
        read.insert(1, vs_cols.decision)
    if ids is None:
        cand = ds.to_table(columns=read, filter=where)
    else:  # a selection (the map's lasso): its ids a chunk at a time, each looked up by the id index
        ids = sorted(set(ids))
        cand = pa.concat_tables([ds.to_table(columns=read, filter=each) for each in id_filters(ids, where)])
    scores = signals(cand.column(cols.decision).to_numpy(zero_copy_only=False),
                     vectors(cand.column(cols.logits), 30).astype(np.float64), f.threshold,
                     None if vs_cols is None else cand.column(vs_cols.decision).to_numpy(zero_copy_only=False))
    offsets = cand.column("_rowoffset").to_numpy()
    order = np.lexsort((offsets, -scores["priority"]))
    pool = _unlabelled(ds, offsets, order, labelled, max(POOL_FACTOR * limit, MIN_POOL))
    if not len(pool):
        return Queue(f.head, vs, f.threshold, len(offsets), _empty(ds, cols, f))
    vecs = ds.take(offsets[pool], columns=[embedding]).column(embedding)
    picked, spread = farthest_points(scores["priority"][pool], vectors(vecs), limit)
    chosen = pool[picked]
    rows = results(ds.take(offsets[chosen], columns=read_columns(cols)), cols, f.threshold)
    for name in ("priority", *SIGNALS):
        rows = rows.append_column(name, pa.array(scores[name][chosen], pa.float64()))
    first_none = [None, *spread[1:].tolist()]  # the first has no image queued before it
    rows = rows.append_column("spread", pa.array(first_none, pa.float64()))
    return Queue(f.head, vs, f.threshold, len(offsets), rows)


def _unlabelled(ds, offsets: np.ndarray, order: np.ndarray, labelled: set[str], size: int) -> np.ndarray:
    """The first `size` positions of `order` whose image has no label (ids read a chunk at a time)."""
    if not labelled:
        return order[:size]
    kept: list[np.ndarray] = []
    start, have = 0, 0
    while have < size and start < len(order):
        chunk = order[start:start + 2 * size]
        chunk_ids = ds.take(offsets[chunk], columns=["id"]).column("id").to_pylist()
        keep = chunk[[i not in labelled for i in chunk_ids]][:size - have]
        kept.append(keep)
        have += len(keep)
        start += len(chunk)
    return np.concatenate(kept) if kept else order[:0]


def _empty(ds, cols: HeadColumns, f: Filter) -> pa.Table:
    rows = results(ds.take(np.zeros(0, np.int64), columns=read_columns(cols)), cols, f.threshold)
    for name in ("priority", *SIGNALS, "spread"):
        rows = rows.append_column(name, pa.array([], pa.float64()))
    return rows
