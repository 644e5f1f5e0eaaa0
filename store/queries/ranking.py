"""Ranking the rows that pass a filter: `top` (the best N along the confidence gradient, by
aesthetic score, or the newest by ingest time) and `page` (the same order, one keyset page at a
time: the gallery's grid).

Every query reads one head's score columns (`faramir.store.heads.columns`) over one table version
and applies the threshold itself (`faramir.decision`); no threshold is ever stored. A page reads
the sort keys of the rows after the cursor that pass the filter (one or two float columns, or the
ingest time), then the full rows of the page only. Nothing here imports torch or LanceDB: Lance scans only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.decision import f32, sql_float
from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.filters import Filter
from faramir.store.heads.columns import on_head, read_columns, results
from faramir.store.queries.images import check_id
from faramir.store.schema import HeadColumns
from faramir.store.sql import sql_str

SORTS = ("confidence", "aesthetic", "newest")  # top's sort keys (there is no scalar quality score upstream)
INGESTED = "ingested_at"  # newest: when the content was first cached (µs since the epoch, UTC)


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
    confidence (the "aesthetic gradient"), aesthetic score or ingest time ("newest"), best (or
    newest) first unless `descending=False`; at most `limit` (None: all). Columns: see `faramir.store.heads.columns.results`.

    Confidence ties (sigmoid saturates to 1.0 in float32) are broken by the decision logit, which
    orders the same way, then by id. Rows whose sort key is NaN come last either way."""
    if sort not in SORTS:
        raise QueryError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
    if limit is not None and limit < 1:
        raise QueryError(f"limit {limit}: must be at least 1")
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    return on_head(cache, f.head, lambda p, ds: _top(ds, p, f, sort, descending, limit))


def _top(ds, cols: HeadColumns, f: Filter, sort: str, descending: bool, limit: int | None) -> pa.Table:
    # Two passes over one table version: the filter and the sort keys of every passing row (two
    # float columns: 8 MB at a million rows), then the full rows of the best `limit` only.
    keys = _sort_keys(cols, sort)
    cand = ds.to_table(columns=[*dict.fromkeys(keys), "_rowoffset"], filter=f.where(cols))
    sign = -1.0 if descending else 1.0

    def ascending_key(column) -> np.ndarray:  # smaller first; NaN (a score that is no number) last
        key = sign * _numbers(column)
        return np.where(np.isnan(key), np.inf, key)

    first = ascending_key(cand.column(keys[0]))
    if limit is not None and len(first) > limit:
        kth = np.partition(first, limit - 1)[limit - 1]
        cand = cand.filter(pa.array(first <= kth))  # the best `limit`, and any rows tied with the last
    rows = ds.take(cand.column("_rowoffset").to_numpy(), columns=_with_keys(cols, keys))
    sort_keys = [np.asarray(rows.column("id").to_pylist(), dtype=str)]  # last tie-break: id
    sort_keys += [ascending_key(rows.column(k)) for k in reversed(keys)]
    order = np.lexsort(sort_keys)[:limit]
    return results(rows.take(pa.array(order, pa.int64())), cols, f.threshold)


@dataclass(frozen=True)
class Page:
    """One page of result rows and the cursor of the next."""

    rows: pa.Table  # as `faramir.store.queries.ranking.top` gives them (`faramir.store.heads.columns.results`)
    next: str | None  # cursor of the next page (None: this is the last)


def _sort_keys(cols: HeadColumns, sort: str) -> list[str]:
    """Sort columns, most significant first, as `top` ranks (then id, ascending)."""
    return {"confidence": [cols.decision], "aesthetic": ["aesthetic_score", cols.decision],
            "newest": [INGESTED]}[sort]


def _with_keys(cols: HeadColumns, keys: list[str]) -> list[str]:
    """The columns of a result row, and the sort keys that are not among them."""
    columns = read_columns(cols)
    return [*columns, *(k for k in keys if k not in columns)]


def _numbers(column) -> np.ndarray:
    """A sort key column as float64: a score as it is, a time as µs since the epoch (exact below
    2^53 µs, the year 2255); a null as NaN."""
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.int64())
    return column.to_numpy(zero_copy_only=False).astype(np.float64)


def _cursor(keys: list[str], values: Sequence[float], image_id: str) -> str:
    return ",".join([*(str(int(v)) if k == INGESTED else repr(f32(v)) for k, v in zip(keys, values)), image_id])


def _literal(key: str, text: str) -> str:
    """The SQL literal of one cursor value of sort column `key`; ValueError if it is none."""
    if key == INGESTED:
        micros = int(text)
        if not 0 <= micros < 2**63:
            raise ValueError
        return f"arrow_cast({micros}, 'Timestamp(Microsecond, Some(\"UTC\"))')"
    raw = float(text)
    value = f32(raw)  # as `_cursor` wrote it: float32, infinite only if saturated
    if np.isnan(value) or (np.isinf(value) and np.isfinite(raw)):
        raise ValueError
    return sql_float(value) if np.isfinite(value) else f"CAST('{value}' AS DOUBLE)"  # a saturated logit


def _after(cursor: str, keys: list[str], descending: bool) -> str:
    """The SQL condition for rows after `cursor` in the order (keys by `descending`, then id)."""
    parts = cursor.split(",") if isinstance(cursor, str) else []
    try:
        if len(parts) != len(keys) + 1:
            raise ValueError
        literals = [_literal(key, part) for key, part in zip(keys, parts)]
        image_id = check_id(parts[-1])
    except (ValueError, QueryError):
        raise QueryError(f"cursor {str(cursor)[:80]!r} is not one this sort gives; start again "
                         f"without it") from None
    beyond = "<" if descending else ">"
    condition = f"id > {sql_str(image_id)}"
    for key, literal in reversed(list(zip(keys, literals))):
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
    in `top`'s order (confidence or aesthetic score, then the decision logit; or ingest time;
    then id). `after`
    is the `next` cursor of the previous page; pages joined end to end equal `top(limit=None)`."""
    if sort not in SORTS:
        raise QueryError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
    if limit < 1:
        raise QueryError(f"limit {limit}: must be at least 1")
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)

    def run(cols: HeadColumns, ds) -> Page:
        keys = _sort_keys(cols, sort)
        where = f.where(cols)
        if after:
            where = f"{where} AND {_after(after, keys, descending)}"
        cand = ds.to_table(columns=[*keys, "_rowoffset"], filter=where)
        sign = -1.0 if descending else 1.0
        first = sign * _numbers(cand.column(keys[0]))
        more = len(first) > limit
        if more:
            kth = np.partition(first, limit - 1)[limit - 1]
            cand = cand.filter(pa.array(first <= kth))  # the best `limit`, and rows tied with the last
        rows = ds.take(cand.column("_rowoffset").to_numpy(), columns=_with_keys(cols, keys))
        order_keys = [np.asarray(rows.column("id").to_pylist(), dtype=str)]
        order_keys += [sign * _numbers(rows.column(k)) for k in reversed(keys)]
        rows = rows.take(pa.array(np.lexsort(order_keys)[:limit], pa.int64()))
        cursor = None
        if more and len(rows):
            last = len(rows) - 1
            values = [_numbers(rows.column(k).slice(last))[0] for k in keys]
            cursor = _cursor(keys, values, rows.column("id")[last].as_py())
        return Page(results(rows, cols, f.threshold), cursor)

    return on_head(cache, f.head, run)
