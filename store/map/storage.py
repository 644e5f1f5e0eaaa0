"""The map in the cache: the ``layout`` table (id, x, y, and the fit that placed the row) and the
``layout_model`` table (the fitted model, `faramir.store.map.model.LayoutModel`, as arrays).

A refit writes its model first, under a new fit id, then replaces every layout row in one
commit, then deletes older models: a crash in between leaves the old layout with its own model
(the rows say which: their ``fit``), or the new layout with its model and an orphan beside it.
Rows placed later are appended, never moved.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.map.model import LayoutModel


def layout_fit(cache: Cache) -> int | None:
    """The fit id of the stored layout's rows; None when there is no layout."""
    ds = cache.dataset(schema.LAYOUT)
    first = ds.head(1, columns=["fit"]) if ds.count_rows() else None
    return None if first is None or not len(first) else first.column("fit")[0].as_py()


def read_model(cache: Cache) -> LayoutModel | None:
    """The model that placed the stored layout's rows; None when there is no layout."""
    fit = layout_fit(cache)
    if fit is None:
        return None
    rows = cache.read(schema.LAYOUT_MODEL, ["model"], f"fit = {int(fit)}")
    return LayoutModel.from_bytes(rows.column("model")[0].as_py()) if len(rows) else None


def _rows(model: LayoutModel, ids, xy: np.ndarray) -> pa.Table:
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    return pa.table({"id": pa.array(ids, pa.string()), "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1]),
                     "fit": pa.array(np.full(len(xy), model.fit, np.int64))}, schema=schema.LAYOUT_SCHEMA)


def write_fitted(cache: Cache, model: LayoutModel, sample: int, ids, xy: np.ndarray) -> None:
    """Store a new fit: its model, then every row's place (replacing the old layout), then drop
    older models."""
    record = {"fit": model.fit, "embedding": model.embedding, "sample": sample,
              "fitted_at": datetime.now(timezone.utc), "model": model.to_bytes()}
    cache.table(schema.LAYOUT_MODEL).add(pa.Table.from_pylist([record], schema=schema.LAYOUT_MODEL_SCHEMA))
    cache.table(schema.LAYOUT).add(_rows(model, ids, xy), mode="overwrite")
    cache.table(schema.LAYOUT_MODEL).delete(f"fit != {int(model.fit)}")


def append_placed(cache: Cache, model: LayoutModel, ids, xy: np.ndarray) -> int:
    """Add the places of rows placed with `model` (ids already placed keep theirs); how many were given."""
    if not len(xy):
        return 0
    (cache.table(schema.LAYOUT).merge_insert("id").when_not_matched_insert_all()
     .execute(_rows(model, ids, xy)))
    return len(xy)
