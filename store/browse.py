"""Queries for browsing the cache page by page (the gallery's reads, as library functions): keyset
pages in `top`'s order, accepted/rejected counts at a threshold, everything known about one image,
its nearest neighbours, the images two heads disagree on, and the recorded paths of an image.

Like every stage-two query these read one table version through `store.scores` (`on_head`), take
a `Filter` (or its fields as keyword arguments), apply the threshold with upstream's rule
(`faramir.decision`; never stored) and never load the whole table: a page reads the sort keys of
the rows after the cursor that pass the filter (one or two float columns), then the full rows of
the page only. Nothing here imports torch or LanceDB.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.config import ACCEPT_LABELS, N_ACCEPT, OUTPUT_NAMES
from faramir.decision import accepted_sql, decide, f32, sql_float
from store import schema
from store.db import Cache, sql_str
from store.errors import QueryError, UnknownImage
from store.filters import Filter
from store.query import SORTS, count
from store.scores import head_prefix, on_head, read_columns, results

FACT_COLUMNS = ("size", "mtime_ns", "width", "height", "format", "mode")
_ID = re.compile(r"^[0-9a-f]{64}$")


def check_id(image_id: str) -> str:
    """`image_id` if it is a content id (64 lowercase hex digits: a sha256), else QueryError."""
    if not isinstance(image_id, str) or not _ID.match(image_id):
        raise QueryError(f"{str(image_id)[:80]!r} is not a content id (64 lowercase hex digits)")
    return image_id


# -- pages ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of result rows and the cursor of the next."""

    rows: pa.Table  # as `store.query.top` gives them (`store.scores.results`)
    next: str | None  # cursor of the next page (None: this is the last)


def _sort_keys(prefix: str, sort: str) -> list[str]:
    """Sort columns, most significant first, as `top` ranks (then id, ascending)."""
    return [f"{prefix}_decision"] if sort == "confidence" else ["aesthetic_score", f"{prefix}_decision"]


def _cursor(values: Sequence[float], image_id: str) -> str:
    return ",".join([*(repr(f32(v)) for v in values), image_id])


def _after(cursor: str, keys: list[str], descending: bool) -> str:
    """The SQL condition for rows after `cursor` in the order (keys by `descending`, then id)."""
    parts = cursor.split(",") if isinstance(cursor, str) else []
    try:
        if len(parts) != len(keys) + 1:
            raise ValueError
        values = [float(p) for p in parts[:-1]]
        if any(np.isnan(values)):
            raise ValueError
        image_id = check_id(parts[-1])
    except (ValueError, QueryError):
        raise QueryError(f"cursor {str(cursor)[:80]!r} is not one this sort gives; start again "
                         f"without it") from None
    beyond = "<" if descending else ">"
    condition = f"id > {sql_str(image_id)}"
    for key, value in reversed(list(zip(keys, values))):
        literal = sql_float(value) if np.isfinite(value) else f"CAST('{value}' AS DOUBLE)"  # a saturated logit
        condition = f"({key} {beyond} {literal} OR ({key} = {literal} AND {condition}))"
    return condition


def page(
    db: str | os.PathLike | Cache | None = None,
    *,
    sort: str = "confidence",
    descending: bool = True,
    after: str | None = None,
    limit: int = 60,
    filter: Filter | None = None,
    **filters,
) -> Page:
    """One page of the rows passing the filter (a `Filter`, or its fields as keyword arguments),
    in `top`'s order (confidence or aesthetic score, then the decision logit, then id). `after`
    is the `next` cursor of the previous page; pages joined end to end equal `top(limit=None)`."""
    if sort not in SORTS:
        raise QueryError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
    if limit < 1:
        raise QueryError(f"limit {limit}: must be at least 1")
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)

    def run(prefix: str, ds) -> Page:
        keys = _sort_keys(prefix, sort)
        where = f.where(prefix)
        if after:
            where = f"{where} AND {_after(after, keys, descending)}"
        cand = ds.to_table(columns=[*keys, "_rowoffset"], filter=where)
        sign = -1.0 if descending else 1.0
        first = sign * cand.column(keys[0]).to_numpy(zero_copy_only=False).astype(np.float64)
        more = len(first) > limit
        if more:
            kth = np.partition(first, limit - 1)[limit - 1]
            cand = cand.filter(pa.array(first <= kth))  # the best `limit`, and rows tied with the last
        rows = ds.take(cand.column("_rowoffset").to_numpy(), columns=read_columns(prefix))
        order_keys = [np.asarray(rows.column("id").to_pylist(), dtype=str)]
        order_keys += [sign * rows.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
                       for k in reversed(keys)]
        rows = rows.take(pa.array(np.lexsort(order_keys)[:limit], pa.int64()))
        cursor = None
        if more and len(rows):
            last = rows.slice(len(rows) - 1).to_pylist()[0]
            cursor = _cursor([last[k] for k in keys], last["id"])
        return Page(results(rows, prefix, f.threshold), cursor)

    return on_head(cache, f.head, run)


# -- counts -----------------------------------------------------------------------------------------


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


# -- one image ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDetail:
    """Everything the cache knows about one image (`detail`)."""

    id: str
    paths: list[str]
    aesthetic_score: float | None
    size: int | None
    mtime_ns: int | None
    width: int | None
    height: int | None
    format: str | None
    mode: str | None
    threshold: float
    logit_names: list[str]  # the 30 class names in upstream order, then "accept" (the decision)
    accept_side: int  # logits 0 … accept_side-1 are accept-biased, the rest of the 30 reject-biased
    scores: list[dict]  # per registered head that scored it: head, confidence, accepted, label, logits

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _row(cache: Cache, image_id: str, columns: list[str]) -> dict:
    where = f"id = {sql_str(check_id(image_id))}"
    rows = cache.dataset(schema.IMAGES).to_table(columns=columns, filter=where, limit=1)
    if not len(rows):
        raise UnknownImage(f"{image_id}: no cached image has this id in {cache.uri}")
    return rows.to_pylist()[0]


def paths(image_id: str, db: str | os.PathLike | Cache | None = None) -> list[str]:
    """Every path the cache recorded for this content id (the only paths a face may open)."""
    return list(_row(Cache.open(db), image_id, ["paths"])["paths"] or [])


def detail(image_id: str, db: str | os.PathLike | Cache | None = None, *, threshold: float = 0.5) -> ImageDetail:
    """Everything the cache knows about one image: its paths and file facts, the aesthetic score,
    and under every registered head that scored it the confidence, the decision at `threshold`,
    the label and all 31 logits (30 class logits in upstream order, then the decision logit)."""
    threshold = Filter(threshold=threshold).threshold  # checked as every query checks it
    cache = Cache.open(db)
    names = cache.dataset(schema.IMAGES).schema.names
    heads = [(h["name"], h["prefix"]) for h in cache.heads() if f"{h['prefix']}_confidence" in names]
    columns = ["id", "paths", "aesthetic_score", *FACT_COLUMNS]
    for _, prefix in heads:  # a head scored before schema version 2 has no P_free column
        columns += [c for c in schema.score_column_names(prefix) if c in names]
    row = _row(cache, image_id, columns)
    scores = []
    for name, prefix in heads:
        confidence = row[f"{prefix}_confidence"]
        if confidence is None:
            continue  # not scored by this head yet
        accepted, label = decide(confidence, row[f"{prefix}_accept_label"], row[f"{prefix}_reject_label"],
                                 threshold)
        scores.append({"head": name, "confidence": confidence, "accepted": bool(accepted), "label": label,
                       "logits": [*row[f"{prefix}_logits"], row[f"{prefix}_decision"]]})
    return ImageDetail(
        id=row["id"], paths=list(row["paths"] or []), aesthetic_score=row["aesthetic_score"],
        **{k: row[k] for k in FACT_COLUMNS}, threshold=threshold, logit_names=list(OUTPUT_NAMES),
        accept_side=N_ACCEPT, scores=scores,
    )


def similar_to(image_id: str, db: str | os.PathLike | Cache | None = None, *, k: int = 24,
               embedding: str = "faramir", filter: Filter | None = None, **filters) -> pa.Table:
    """`store.similar` from a cached image named by content id only (its stored vector is the
    query: nothing is looked up by path, no file is read). Columns as `similar` gives them."""
    from store.neighbours import embedding_column, similar

    cache = Cache.open(db)
    column = embedding_column(embedding)
    vector = _row(cache, image_id, [column])[column]
    if vector is None:
        raise UnknownImage(f"{image_id}: this cached image has no {embedding} embedding")
    return similar(np.asarray(vector, np.float32), cache, k=k, embedding=embedding, filter=filter, **filters)


# -- two heads ----------------------------------------------------------------------------------------


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


def _disagreeing(rows: pa.Table, gap: np.ndarray, prefixes: dict[str, str], threshold: float) -> pa.Table:
    """Raw rows of two heads' columns → id, path, paths, aesthetic_score, gap, then confidence,
    accepted and label under each head (suffixes _a and _b)."""
    paths = rows.column("paths")
    columns = {"id": rows.column("id"),
               "path": pc.list_element(paths, 0) if len(rows) else pa.array([], pa.string()),
               "paths": paths, "aesthetic_score": rows.column("aesthetic_score"), "gap": pa.array(gap, pa.float64())}
    for suffix, p in prefixes.items():
        confidence = rows.column(f"{p}_confidence")
        accepted, label = decide(confidence, rows.column(f"{p}_accept_label"), rows.column(f"{p}_reject_label"),
                                 threshold)
        columns.update({f"confidence_{suffix}": confidence, f"accepted_{suffix}": accepted, f"label_{suffix}": label})
    return pa.table(columns)


def disagreements(
    head_a: str,
    head_b: str,
    db: str | os.PathLike | Cache | None = None,
    *,
    threshold: float = 0.5,
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
    prefix_b = head_prefix(cache, head_b)

    def run(prefix_a: str, ds) -> Disagreements:
        a, b = f"{prefix_a}_confidence", f"{prefix_b}_confidence"
        where = (f"(({accepted_sql(a, threshold)} AND {accepted_sql(b, threshold, False)}) OR "
                 f"({accepted_sql(a, threshold, False)} AND {accepted_sql(b, threshold)}))")
        cand = ds.to_table(columns=[a, b, "_rowoffset"], filter=where)
        gap = np.abs(cand.column(a).to_numpy(zero_copy_only=False).astype(np.float64)
                     - cand.column(b).to_numpy(zero_copy_only=False).astype(np.float64))
        offsets = cand.column("_rowoffset").to_numpy()
        order = np.lexsort((offsets, -gap))[offset:offset + limit]
        columns = ["id", "paths", "aesthetic_score"]
        for p in (prefix_a, prefix_b):
            columns += [f"{p}_confidence", f"{p}_accept_label", f"{p}_reject_label"]
        rows = ds.take(offsets[order], columns=columns)
        return Disagreements(head_a, head_b, threshold, len(gap),
                             _disagreeing(rows, gap[order], {"a": prefix_a, "b": prefix_b}, threshold))

    return on_head(cache, head_a, run)


def row_count(db: str | os.PathLike | Cache | None = None) -> int:
    """How many images the cache holds (0 before the first ingest)."""
    cache = Cache.open(db)
    return cache.dataset(schema.IMAGES).count_rows() if cache.has_images() else 0
