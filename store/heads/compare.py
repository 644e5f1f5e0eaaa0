"""Two heads side by side: the images they decide differently at one threshold, largest
confidence gap first (the gallery's comparison)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.config import DEFAULT_THRESHOLD
from faramir.decision import accepted_sql, decide
from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.filters import Filter
from faramir.store.heads.columns import head_columns, on_head
from faramir.store.schema import HeadColumns


@dataclass(frozen=True)
class Disagreements:
    """The images two heads decide differently at one threshold (`disagreements`)."""

    head_a: str
    head_b: str
    threshold: float
    total: int  # how many images the heads disagree on
    rows: pa.Table  # the window asked for; columns: see `disagreements`

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "rows": self.rows.to_pylist()}


def _disagreeing(rows: pa.Table, gap: np.ndarray, heads: dict[str, HeadColumns], threshold: float) -> pa.Table:
    """Raw rows of two heads' columns → id, path, paths, aesthetic_score, gap, then confidence,
    accepted and label under each head (suffixes _a and _b)."""
    paths = rows.column("paths")
    columns = {"id": rows.column("id"),
               "path": pc.list_element(paths, 0) if len(rows) else pa.array([], pa.string()),
               "paths": paths, "aesthetic_score": rows.column("aesthetic_score"), "gap": pa.array(gap, pa.float64())}
    for suffix, cols in heads.items():
        confidence = rows.column(cols.confidence)
        accepted, label = decide(confidence, rows.column(cols.accept_label), rows.column(cols.reject_label),
                                 threshold)
        columns.update({f"confidence_{suffix}": confidence, f"accepted_{suffix}": accepted, f"label_{suffix}": label})
    return pa.table(columns)


def disagreements(
    head_a: str,
    head_b: str,
    db: str | os.PathLike | Cache | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    offset: int = 0,
    limit: int = 60,
) -> Disagreements:
    """The images that heads `head_a` and `head_b` decide differently at `threshold`, sorted by
    the gap between their confidences (largest first): the total, and rows `offset` to
    `offset + limit`. Row columns: id, path, paths, aesthetic_score, gap, then confidence,
    accepted and label under each head (suffixes _a and _b)."""
    if offset < 0 or limit < 1:
        raise QueryError(f"offset {offset} / limit {limit}: offset must be at least 0, limit at least 1")
    if head_a == head_b:
        raise QueryError(f"compare two different heads (both are {head_a!r})")
    threshold = Filter(threshold=threshold).threshold  # checked as every query checks it
    cache = Cache.open(db)
    cols_b = head_columns(cache, head_b)

    def run(cols_a: HeadColumns, ds) -> Disagreements:
        a, b = cols_a.confidence, cols_b.confidence
        where = (f"(({accepted_sql(a, threshold)} AND {accepted_sql(b, threshold, False)}) OR "
                 f"({accepted_sql(a, threshold, False)} AND {accepted_sql(b, threshold)}))")
        cand = ds.to_table(columns=[a, b, "_rowoffset"], filter=where)
        gap = np.abs(cand.column(a).to_numpy(zero_copy_only=False).astype(np.float64)
                     - cand.column(b).to_numpy(zero_copy_only=False).astype(np.float64))
        offsets = cand.column("_rowoffset").to_numpy()
        order = np.lexsort((offsets, -gap))[offset:offset + limit]
        columns = ["id", "paths", "aesthetic_score"]
        for cols in (cols_a, cols_b):
            columns += [cols.confidence, cols.accept_label, cols.reject_label]
        rows = ds.take(offsets[order], columns=columns)
        return Disagreements(head_a, head_b, threshold, len(gap),
                             _disagreeing(rows, gap[order], {"a": cols_a, "b": cols_b}, threshold))

    return on_head(cache, head_a, run)
