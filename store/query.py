"""Stage-two queries over cached scores: counts, ranking and statistics at a threshold. Nothing
here decodes an image or runs a model, and nothing imports torch or LanceDB: Lance scans only.

Every query reads one head's score columns (`store.scores`) and applies the threshold itself
(`faramir.decision`); no threshold is ever stored.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.config import LABELS
from store.db import Cache
from store.errors import QueryError
from store.filters import Filter
from store.scores import decided, on_head, read_columns, results

SORTS = ("confidence", "aesthetic")  # top's sort keys (there is no scalar quality score upstream)
DEFAULT_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 … 0.95


def count(db: str | os.PathLike | Cache | None = None, *, filter: Filter | None = None, **filters) -> int:
    """How many cached rows pass the filter (a `Filter`, or its fields as keyword arguments)."""
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    return on_head(cache, f.head, lambda p, ds: ds.count_rows(f.where(p)))


def top(
    db: str | os.PathLike | Cache | None = None,
    *,
    sort: str = "confidence",
    descending: bool = True,
    limit: int | None = 20,
    filter: Filter | None = None,
    **filters,
) -> pa.Table:
    """Rows passing the filter (a `Filter`, or its fields as keyword arguments), ranked by
    confidence (the "aesthetic gradient") or aesthetic score, best first unless
    `descending=False`; at most `limit` (None: all). Columns: see `store.scores.results`.

    Confidence ties (sigmoid saturates to 1.0 in float32) are broken by the decision logit, which
    orders the same way, then by id. Rows whose sort key is NaN come last either way."""
    if sort not in SORTS:
        raise QueryError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
    if limit is not None and limit < 1:
        raise QueryError(f"limit {limit}: must be at least 1")
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    return on_head(cache, f.head, lambda p, ds: _top(ds, p, f, sort, descending, limit))


def _top(ds, prefix: str, f: Filter, sort: str, descending: bool, limit: int | None) -> pa.Table:
    # Two passes over one table version: the filter and the sort keys of every passing row (two
    # float columns: 8 MB at a million rows), then the full rows of the best `limit` only.
    decision = f"{prefix}_decision"
    keys = [decision] if sort == "confidence" else ["aesthetic_score", decision]
    cand = ds.to_table(columns=[*dict.fromkeys(keys), "_rowoffset"], filter=f.where(prefix))
    sign = -1.0 if descending else 1.0

    def ascending_key(column) -> np.ndarray:  # smaller first; NaN (a score that is no number) last
        key = sign * column.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.where(np.isnan(key), np.inf, key)

    first = ascending_key(cand.column(keys[0]))
    if limit is not None and len(first) > limit:
        kth = np.partition(first, limit - 1)[limit - 1]
        cand = cand.filter(pa.array(first <= kth))  # the best `limit`, and any rows tied with the last
    rows = ds.take(cand.column("_rowoffset").to_numpy(), columns=read_columns(prefix))
    sort_keys = [np.asarray(rows.column("id").to_pylist(), dtype=str)]  # last tie-break: id
    sort_keys += [ascending_key(rows.column(k)) for k in reversed(keys)]
    order = np.lexsort(sort_keys)[:limit]
    return results(rows.take(pa.array(order, pa.int64())), prefix, f.threshold)


@dataclass(frozen=True)
class Stats:
    """What `stats` counted over the rows passing a filter, at the filter's threshold."""

    head: str
    threshold: float
    total: int
    accepted: int
    rejected: int
    labels: dict[str, int]  # every label name, upstream order: rows with that label at the threshold
    histogram: dict[str, list]  # "edges" (bins + 1 floats over [0, 1]) and "counts" (bins ints)
    sweep: list[dict]  # {"threshold", "accepted"} at each sweep threshold and the filter's own

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stats(
    db: str | os.PathLike | Cache | None = None,
    *,
    bins: int = 20,
    sweep: Sequence[float] = DEFAULT_SWEEP,
    filter: Filter | None = None,
    **filters,
) -> Stats:
    """Counts at the threshold over the rows passing the filter: total, accepted, rejected, per
    label; a confidence histogram (`bins` equal bins over [0, 1]); and a threshold sweep (how many
    pass at each threshold of `sweep`, plus the filter's own)."""
    if bins < 1:
        raise QueryError(f"bins {bins}: must be at least 1")
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    for t in sweep:
        if not 0.0 <= t <= 1.0:
            raise QueryError(f"sweep threshold {t}: must be between 0 and 1")

    def run(prefix: str, ds) -> Stats:
        cols = [f"{prefix}_confidence", f"{prefix}_accept_label", f"{prefix}_reject_label"]
        rows = ds.to_table(columns=cols, filter=f.where(prefix))
        accepted, label = decided(rows, prefix, f.threshold)
        conf = rows.column(cols[0]).to_numpy()
        n_accepted = pc.sum(accepted).as_py() or 0
        counts = pc.value_counts(label)
        counts = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
        hist, edges = np.histogram(conf, bins=bins, range=(0.0, 1.0))  # NaN falls in no bin
        ordered = np.sort(conf[~np.isnan(conf)])  # NaN is accepted at no threshold
        thresholds = sorted(set(round(float(x), 6) for x in sweep) | {f.threshold})
        return Stats(
            head=f.head, threshold=f.threshold, total=len(conf), accepted=n_accepted,
            rejected=len(conf) - n_accepted,
            labels={name: int(counts.get(name, 0)) for name in LABELS},
            histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]},
            sweep=[{"threshold": x,
                    "accepted": int(len(ordered) - np.searchsorted(ordered, np.float32(x), side="right"))}
                   for x in thresholds],
        )

    return on_head(cache, f.head, run)
