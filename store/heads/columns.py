"""Reading one head's scores: its name → column prefix, one retry when a rescore swaps the
columns mid-query, and raw rows → result rows judged at a threshold (`faramir.decision`).

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
from faramir.store.heads.unscored import warn_unscored

T = TypeVar("T")

def read_columns(prefix: str) -> list[str]:
    """The columns a result row is made from."""
    return ["id", "paths", "aesthetic_score", f"{prefix}_confidence", f"{prefix}_decision",
            f"{prefix}_accept_label", f"{prefix}_reject_label"]


def resolve(cache: Cache, head: str):
    """(column prefix of registered head `head`, the images table as a Lance dataset holding them).
    Rows the head has not scored are left out of every query: an `UnscoredRows` warning says so."""
    prefix = cache.head(head)["prefix"]
    ds = cache.dataset(schema.IMAGES)
    if f"{prefix}_confidence" not in ds.schema.names:
        raise QueryError(f"head {head!r} is registered but its columns ({prefix}_*) are missing from "
                         f"{cache.uri}; rescore it with 'faramir rescore --head FILE --name {head}'")
    warn_unscored(cache, head, prefix, ds)
    return prefix, ds


def head_prefix(cache: Cache, head: str) -> str:
    """The column prefix of a registered head whose columns are in the images table."""
    return resolve(cache, head)[0]


def on_head(cache: Cache, head: str, run: Callable[[str, object], T]) -> T:
    """run(prefix, ds) over one version of the images table (`ds`, a Lance dataset); once more
    if a concurrent rescore of `head` swapped its columns meanwhile."""
    prefix, ds = resolve(cache, head)
    try:
        return run(prefix, ds)
    except Exception:
        if cache.head(head)["prefix"] == prefix:
            raise
        return run(*resolve(cache, head))


def decided(rows: pa.Table, prefix: str, threshold: float) -> tuple[pa.Array, pa.Array]:
    """(accepted, label) of each row at `threshold`, from the head's confidence and side labels."""
    return decide(rows.column(f"{prefix}_confidence"), rows.column(f"{prefix}_accept_label"),
                  rows.column(f"{prefix}_reject_label"), threshold)


def results(rows: pa.Table, prefix: str, threshold: float, first: Sequence[str] = (),
            extra: Sequence[str] = ()) -> pa.Table:
    """Raw rows (`read_columns`) as result rows: `first`, then id, path (the first of paths),
    confidence, accepted, label (both at `threshold`), aesthetic_score, decision, paths, then `extra`."""
    accepted, label = decided(rows, prefix, threshold)
    paths = rows.column("paths")
    columns = {name: rows.column(name) for name in first}
    columns.update({
        "id": rows.column("id"),
        "path": pc.list_element(paths, 0) if len(rows) else pa.array([], pa.string()),
        "confidence": rows.column(f"{prefix}_confidence"),
        "accepted": accepted,
        "label": label,
        "aesthetic_score": rows.column("aesthetic_score"),
        "decision": rows.column(f"{prefix}_decision"),
        "paths": paths,
    })
    columns.update({name: rows.column(name) for name in extra})
    return pa.table(columns)
