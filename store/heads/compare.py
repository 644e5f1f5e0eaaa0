"""Two heads side by side: the images they decide differently at one threshold, largest
confidence gap first (the gallery's comparison, `disagreements`), and what switching from one to
the other changes (`heads_diff`, `faramir heads diff`): how many images go accept → reject and
reject → accept, by the new head's reason, and how many curator labels each head gets right.
Everything here reads; discarding a head is `faramir.store.heads.registry.remove_head`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.config import DEFAULT_THRESHOLD
from faramir.decision import accepted, accepted_sql, decide
from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.filters import Filter
from faramir.store.heads.columns import head_columns, on_head
from faramir.store.labels.table import labelled_ids
from faramir.store.schema import HeadColumns
from faramir.store.sql import id_filters


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


def _flips_where(a: str, b: str, threshold: float) -> str:
    """SQL: the rows whose confidence columns `a` and `b` fall on opposite sides of the threshold."""
    return (f"(({accepted_sql(a, threshold)} AND {accepted_sql(b, threshold, False)}) OR "
            f"({accepted_sql(a, threshold, False)} AND {accepted_sql(b, threshold)}))")


def _two_heads(head_a: str, head_b: str, db, threshold: float) -> tuple[float, Cache, HeadColumns]:
    """The threshold checked as every query checks it, the cache, and head B's columns (head A's
    come through `on_head`, with the dataset version they were read at)."""
    if head_a == head_b:
        raise QueryError(f"compare two different heads (both are {head_a!r})")
    threshold = Filter(threshold=threshold).threshold
    cache = Cache.open(db)
    return threshold, cache, head_columns(cache, head_b)


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
    threshold, cache, cols_b = _two_heads(head_a, head_b, db, threshold)

    def run(cols_a: HeadColumns, ds) -> Disagreements:
        a, b = cols_a.confidence, cols_b.confidence
        cand = ds.to_table(columns=[a, b, "_rowoffset"], filter=_flips_where(a, b, threshold))
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


@dataclass(frozen=True)
class HeadsDiff:
    """What going from head `head_a` to head `head_b` changes at one threshold (`heads_diff`)."""

    head_a: str
    head_b: str
    threshold: float
    total: int  # images both heads scored
    accept_to_reject: int  # accepted by A, rejected by B
    reject_to_accept: int
    by_reason: list[dict]  # {flip: "accept_to_reject" | "reject_to_accept", reason: B's label, count}, most first
    labelled: int  # curator-labelled images both heads scored
    right_a: int  # of them, those whose label head A's decision agrees with
    right_b: int
    fixed: int  # flips that B gets right and A got wrong (labelled ones only)
    broken: int  # flips that A got right and B gets wrong

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def heads_diff(head_a: str, head_b: str, db: str | os.PathLike | Cache | None = None, *,
               threshold: float = DEFAULT_THRESHOLD) -> HeadsDiff:
    """What switching from head `head_a` to `head_b` changes at `threshold`: the images that
    flip each way, by B's reason (its label at the threshold), and how many curator labels each
    head's decisions agree with. The flips themselves, largest change first: `disagreements`."""
    threshold, cache, cols_b = _two_heads(head_a, head_b, db, threshold)

    def run(cols_a: HeadColumns, ds) -> HeadsDiff:
        a, b = cols_a.confidence, cols_b.confidence
        total = ds.count_rows(f"{a} IS NOT NULL AND {b} IS NOT NULL")
        flips = ds.to_table(columns=[a, b, cols_b.accept_label, cols_b.reject_label],
                            filter=_flips_where(a, b, threshold))
        to_accept, reason = decide(flips.column(b), flips.column(cols_b.accept_label),
                                   flips.column(cols_b.reject_label), threshold)
        to_accept = to_accept.to_numpy(zero_copy_only=False)
        kinds = np.where(to_accept, "reject_to_accept", "accept_to_reject")
        pairs, counts = np.unique(np.stack([kinds, np.asarray(reason.to_pylist(), dtype=object).astype(str)]),
                                  axis=1, return_counts=True) if len(kinds) else (np.zeros((2, 0)), [])
        by_reason = sorted(({"flip": str(k), "reason": str(r), "count": int(n)} for (k, r), n in zip(pairs.T, counts)),
                           key=lambda e: (-e["count"], e["flip"], e["reason"]))
        return HeadsDiff(head_a, head_b, threshold, total, int((~to_accept).sum()), int(to_accept.sum()),
                         by_reason, *_label_agreement(ds, a, b, threshold, cache))

    return on_head(cache, head_a, run)


def _label_agreement(ds, a: str, b: str, threshold: float, cache: Cache) -> tuple[int, int, int, int, int]:
    """(labelled, right under A, right under B, fixed, broken) over the curator labels of images
    that both heads scored."""
    labels = labelled_ids(cache)
    target = dict(zip(labels.column("id").to_pylist(), labels.column("target").to_pylist()))
    rows = pa.concat_tables([ds.to_table(columns=["id", a, b], filter=where)
                             for where in id_filters(sorted(target), f"{a} IS NOT NULL AND {b} IS NOT NULL")])
    truth = np.array([target[i] for i in rows.column("id").to_pylist()], bool)
    right_a, right_b = (accepted(rows.column(c), threshold).to_numpy(zero_copy_only=False) == truth for c in (a, b))
    return (len(truth), int(right_a.sum()), int(right_b.sum()), int((right_b & ~right_a).sum()),
            int((right_a & ~right_b).sum()))
