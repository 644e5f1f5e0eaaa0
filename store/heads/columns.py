"""Reading one head's scores: its name → its columns (`HeadColumns`, through the registry), one
retry when a rescore swaps them mid-query, and raw rows → result rows judged at a threshold
(`faramir.decision`).

Every query (count, top, stats, similar, export, evaluate) reads a head's scores through here, so
the accepted flag and the label of a row are derived in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from faramir.decision import decide
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.heads import registry
from faramir.store.heads.unscored import warn_unscored
from faramir.store.schema import HeadColumns

T = TypeVar("T")


def read_columns(cols: HeadColumns) -> list[str]:
    """The columns a result row is made from."""
    return ["id", "paths", "aesthetic_score", cols.confidence, cols.decision, cols.accept_label, cols.reject_label]


def resolve(cache: Cache, head: str) -> tuple[HeadColumns, object]:
    """(the columns of registered head `head`, the images table as a Lance dataset holding them).
    Rows the head has not scored are left out of every query: an `UnscoredRows` warning says so."""
    cols = registry.columns(cache, head)
    ds = cache.dataset(schema.IMAGES)
    missing = [c for c in (cols.confidence, cols.accept_label, cols.reject_label) if c not in ds.schema.names]
    if missing:
        raise QueryError(f"head {head!r} is registered but its columns ({', '.join(missing)}) are missing from "
                         f"{cache.uri}; rescore it with 'faramir rescore --head FILE --name {head}'")
    warn_unscored(cache, head, cols, ds)
    return cols, ds


def head_columns(cache: Cache, head: str) -> HeadColumns:
    """The columns of a registered head whose columns are in the images table."""
    return resolve(cache, head)[0]


def on_head(cache: Cache, head: str, run: Callable[[HeadColumns, object], T]) -> T:
    """run(columns, ds) over one version of the images table (`ds`, a Lance dataset); once more
    if a concurrent rescore of `head` swapped its columns meanwhile."""
    cols, ds = resolve(cache, head)
    try:
        return run(cols, ds)
    except Exception:
        if registry.columns(cache, head) == cols:
            raise
        return run(*resolve(cache, head))


def decided(rows: pa.Table, cols: HeadColumns, threshold: float) -> tuple[pa.Array, pa.Array]:
    """(accepted, label) of each row at `threshold`, from the head's confidence and side labels."""
    return decide(rows.column(cols.confidence), rows.column(cols.accept_label), rows.column(cols.reject_label),
                  threshold)


def results(rows: pa.Table, cols: HeadColumns, threshold: float, first: Sequence[str] = (),
            extra: Sequence[str] = ()) -> pa.Table:
    """Raw rows (`read_columns`) as result rows: `first`, then id, path (the first of paths),
    confidence, accepted, label (both at `threshold`), aesthetic_score, decision, paths, then `extra`."""
    accepted, label = decided(rows, cols, threshold)
    paths = rows.column("paths")
    columns = {name: rows.column(name) for name in first}
    columns.update({
        "id": rows.column("id"),
        "path": pc.list_element(paths, 0) if len(rows) else pa.array([], pa.string()),
        "confidence": rows.column(cols.confidence),
        "accepted": accepted,
        "label": label,
        "aesthetic_score": rows.column("aesthetic_score"),
        "decision": rows.column(cols.decision),
        "paths": paths,
    })
    columns.update({name: rows.column(name) for name in extra})
    return pa.table(columns)
