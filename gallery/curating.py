"""The gallery's curating endpoints: what to label next (`/api/queue`), the map (`/api/map/...`:
binary arrays, never JSON objects per point), what a new head changes (`/api/diff`) and discarding
it (`/api/heads/discard`). Like `faramir.gallery.api`, a face: parse, call one library function,
shape the answer.

The map's points are row i of one layout version (`key`); a lasso is sent as its polygon, in
layout units, so that the page's address can hold a selection and the server decides which
images it covers (`faramir.store.map.points.within`).
"""

from __future__ import annotations

import math

import numpy as np
from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response

from faramir.config import DEFAULT_THRESHOLD
from faramir.gallery.api import PAGE_LIMIT, Gallery, Refused, gallery, tiles, view
from faramir.store import schema
from faramir.store.filters import Filter
from faramir.store.heads import registry
from faramir.store.heads.columns import read_columns, results
from faramir.store.labels.table import label_counts, set_labels
from faramir.store.map import points as map_points
from faramir.store.map.points import COLOURS, MapPoints

MAX_VERTICES = 2_000  # of a lasso polygon
MAX_LASSO_LABELS = 200_000  # images one lasso may label at once
MAX_LOOKUP = 1_000  # points whose ids one request may ask for
BINARY = {"Cache-Control": "no-store"}

router = APIRouter(prefix="/api")


# -- what to label next ------------------------------------------------------------------------------


@router.get("/queue")
def label_next(
    f: Filter = Depends(view),
    vs: str | None = Query(None, max_length=64),
    limit: int = Query(48, ge=1, le=PAGE_LIMIT),
    key: int | None = Query(None, ge=0),
    poly: str | None = Query(None, max_length=40 * MAX_VERTICES),
    g: Gallery = Depends(gallery),
):
    from faramir.store.labels.queue import queue

    ids = _selection_ids(g, key, poly) if poly else None
    result = queue(g.cache, limit=limit, vs=vs or None, ids=ids, filter=f)
    return {"passing": result.passing, "vs": result.vs, "selection": None if ids is None else len(ids),
            "rows": tiles(result.rows.to_pylist(), g.cache)}


# -- the map -------------------------------------------------------------------------------------------


@router.get("/map")
def map_info(g: Gallery = Depends(gallery)):
    pts = map_points.points(g.cache) if g.cache.has_images() else None
    unplaced = map_points.unplaced(g.cache, pts)  # 0 without images
    if pts is None:
        return {"count": 0, "unplaced": unplaced,
                "missing": f"No map yet: run 'faramir map --db {g.cache.uri}' once (a few minutes for a "
                           f"million images); ingest places new images on it from then on."}
    lo, hi = pts.xy.min(0), pts.xy.max(0)
    return {"key": pts.key, "count": len(pts.xy), "embedding": pts.embedding, "unplaced": unplaced,
            "bounds": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]}


def _points(g: Gallery, key: int) -> MapPoints:
    pts = map_points.points(g.cache) if g.cache.has_images() else None
    if pts is None:
        raise Refused(404, "no map yet: run 'faramir map'")
    if pts.key != key:
        raise Refused(409, f"the map changed (layout {key} is now {pts.key}); reload it")
    return pts


@router.get("/map/points")
def map_xy(key: int = Query(..., ge=0), g: Gallery = Depends(gallery)):
    """x, y of every point, float32, interleaved (little-endian, as typed arrays read them)."""
    pts = _points(g, key)
    return Response(np.ascontiguousarray(pts.xy, "<f4").tobytes(), media_type="application/octet-stream",
                    headers=BINARY)


@router.get("/map/colours")
def map_colours(
    key: int = Query(..., ge=0),
    head: str = Query(schema.DEFAULT_HEAD, min_length=1, max_length=64),
    by: str = Query("confidence"),
    g: Gallery = Depends(gallery),
):
    """One colour value per point (`faramir.store.map.points.colours`): float32 or uint8."""
    if by not in COLOURS:
        raise Refused(400, f"by: use one of {', '.join(COLOURS)}")
    values = map_points.colours(g.cache, _points(g, key), head, by)
    return Response(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes(),
                    media_type="application/octet-stream", headers=BINARY)


@router.get("/map/ids")
def map_ids(key: int = Query(..., ge=0), i: str = Query(..., max_length=12 * MAX_LOOKUP),
            g: Gallery = Depends(gallery)):
    pts = _points(g, key)
    try:
        wanted = [int(x) for x in i.split(",") if x.strip()]
    except ValueError:
        raise Refused(400, "i: point indices, comma-separated") from None
    if len(wanted) > MAX_LOOKUP or any(not 0 <= x < len(pts.xy) for x in wanted):
        raise Refused(400, f"i: at most {MAX_LOOKUP} indices, each below {len(pts.xy)}")
    return {"ids": pts.ids.take(wanted).to_pylist()}


def _polygon(poly: str) -> np.ndarray:
    try:
        values = [float(x) for x in poly.split(",")]
    except ValueError:
        raise Refused(400, "poly: the lasso's vertices as x,y,x,y,... numbers") from None
    if len(values) % 2 or not 6 <= len(values) <= 2 * MAX_VERTICES or not all(map(math.isfinite, values)):
        raise Refused(400, f"poly: 3 to {MAX_VERTICES} vertices as x,y pairs of finite numbers")
    return np.asarray(values).reshape(-1, 2)


def _selection_ids(g: Gallery, key: int | None, poly: str) -> list[str]:
    if key is None:
        raise Refused(400, "key: the map's version is needed with a lasso")
    pts = _points(g, key)
    return pts.ids.take(map_points.within(pts, _polygon(poly))).to_pylist()


@router.get("/map/selection")
def map_selection(
    key: int = Query(..., ge=0),
    poly: str = Query(..., max_length=40 * MAX_VERTICES),
    f: Filter = Depends(view),
    offset: int = Query(0, ge=0),
    limit: int = Query(60, ge=1, le=PAGE_LIMIT),
    g: Gallery = Depends(gallery),
):
    """The images a lasso covers that pass the view's filter, by confidence (highest first)."""
    pts = _points(g, key)
    chosen = map_points.within(pts, _polygon(poly))
    rows = map_points.offsets(g.cache, pts)[chosen]
    rows = rows[rows >= 0]
    cols = registry.columns(g.cache, f.head)
    ds = g.cache.dataset(schema.IMAGES)
    facts = ds.take(rows, columns=[cols.confidence, cols.accept_label, cols.reject_label, "aesthetic_score"])
    conf = facts.column(0).to_numpy(zero_copy_only=False)
    keep = f.keep(conf, facts.column(1).to_pylist(), facts.column(2).to_pylist(), facts.column(3).to_numpy())
    rows, conf = rows[keep], conf[keep]
    order = np.lexsort((rows, -np.nan_to_num(conf, nan=-1.0)))
    page = rows[order[offset:offset + limit]]
    out = results(ds.take(page, columns=read_columns(cols)), cols, f.threshold).to_pylist()
    more = offset + limit < len(rows)
    return {"covered": int(len(chosen)), "count": int(len(rows)), "rows": tiles(out, g.cache),
            "next": offset + limit if more else None}


@router.post("/map/label")
def map_label(
    key: int = Body(..., embed=True, ge=0),
    poly: str = Body(..., embed=True, max_length=40 * MAX_VERTICES),
    label: str = Body(..., embed=True, max_length=32),
    g: Gallery = Depends(gallery),
):
    """Label every image a lasso covers at once (ordinary labels)."""
    ids = _selection_ids(g, key, poly)
    if len(ids) > MAX_LASSO_LABELS:
        raise Refused(400, f"the lasso covers {len(ids)} images; label at most {MAX_LASSO_LABELS} at once "
                           f"(zoom in and draw a smaller one)")
    written = set_labels(ids, label, g.cache)  # one commit: all of them or none
    g.jobs.warm()
    return {"written": written, "label": label, "counts": label_counts(g.cache).to_dict()}


# -- what a new head changes -----------------------------------------------------------------------


@router.get("/diff")
def diff(
    a: str = Query(..., min_length=1, max_length=64),
    b: str = Query(..., min_length=1, max_length=64),
    threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0, allow_inf_nan=False),
    g: Gallery = Depends(gallery),
):
    from faramir.store.heads.compare import heads_diff

    return heads_diff(a, b, g.cache, threshold=threshold).to_dict()


@router.post("/heads/discard")
def discard(name: str = Body(..., embed=True, min_length=1, max_length=64), g: Gallery = Depends(gallery)):
    """Remove a head and its scores (`faramir heads rm`): the diff step's "discard it"."""
    removed = registry.remove_head(name, g.cache)
    return {"removed": removed.name, "heads": [h["name"] for h in registry.heads(g.cache)]}
