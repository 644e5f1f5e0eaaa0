"""Counting the rows that pass a filter: how many, accepted and rejected at a threshold, and the
statistics of `faramir stats` (per label, a confidence histogram, a threshold sweep). Lance scans
only: nothing here imports torch or LanceDB."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from faramir.config import ACCEPT_LABELS, LABELS
from faramir.store import limits
from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.filters import Filter
from faramir.store.heads.columns import decided, on_head
from faramir.store.schema import HeadColumns

DEFAULT_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 … 0.95


def count(db: str | os.PathLike | Cache | None = None, *, filter: Filter | None = None, **filters) -> int:
    """How many cached rows pass the filter (a `Filter`, or its fields as keyword arguments)."""
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    return on_head(cache, f.head, lambda p, ds: ds.count_rows(f.where(p)))


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
    limits.check("bins", bins, 1, limits.MAX_BINS, QueryError)
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    for t in sweep:
        if not 0.0 <= t <= 1.0:
            raise QueryError(f"sweep threshold {t}: must be between 0 and 1")

    def run(head: HeadColumns, ds) -> Stats:
        cols = [head.confidence, head.accept_label, head.reject_label]
        rows = ds.to_table(columns=cols, filter=f.where(head))
        accepted, label = decided(rows, head, f.threshold)
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


@dataclass(frozen=True)
class Counts:
    """Rows accepted and rejected at a filter's threshold (`counts`)."""

    accepted: int
    rejected: int
    total: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def counts(db: str | os.PathLike | Cache | None = None, *, filter: Filter | None = None, **filters) -> Counts:
    """Accepted and rejected rows at the filter's threshold among the rows passing its other
    conditions (its accepted/rejected choice itself is ignored): what `stats` counts, by two
    `count` queries instead of a scan of the labels."""
    cache = Cache.open(db)
    f = dataclasses.replace(Filter.of(filter, **filters), accepted=None)
    found = {}
    for side in (True, False):
        if f.labels and all((label in ACCEPT_LABELS) != side for label in f.labels):
            found[side] = 0  # these labels are never the label of a row on this side
        else:
            found[side] = count(cache, filter=dataclasses.replace(f, accepted=side))
    return Counts(accepted=found[True], rejected=found[False], total=found[True] + found[False])
