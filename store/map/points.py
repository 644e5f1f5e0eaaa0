"""What the gallery's Map view draws, as flat arrays: every placed image's coordinates, and one
colour value per image (its confidence under a head, its two side labels, its curator label).

Point i is row i of one version of the ``layout`` table (`MapPoints.key`, which the page sends
back with every question about points, so an answer never mixes two layouts). Colour values are
read from the images table's current version and put in point order through each point's row
offset there, worked out once per (layout version, images table version) and kept by the open
`Cache` (a rescore adds columns without moving rows, but a compaction moves them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.config import LABELS
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import MapError
from faramir.store.heads import registry

COLOURS = ("confidence", "reason", "label")  # what a colour array holds (the decision: confidence vs T)
NO_LABEL = 255  # a side label's code where the head has not scored the image


@dataclass(frozen=True)
class MapPoints:
    """The placed images of one layout version."""

    key: int  # the layout table's version
    embedding: str  # the embedding it was laid out by
    ids: pa.Array  # point i's content id
    xy: np.ndarray  # (N, 2) float32 places


def points(cache: Cache) -> MapPoints | None:
    """The stored layout's points (None: there is no layout), kept per layout version."""
    ds = cache.dataset(schema.LAYOUT)

    def read() -> MapPoints | None:
        rows = ds.to_table(columns=["id", "x", "y"])
        if not len(rows):
            return None
        model = cache.read(schema.LAYOUT_MODEL, ["embedding"])
        xy = np.stack([rows.column("x").to_numpy(), rows.column("y").to_numpy()], axis=1).astype(np.float32)
        return MapPoints(ds.version, model.column(0)[0].as_py() if len(model) else "faramir",
                         rows.column("id").combine_chunks(), xy)

    return cache.kept("map", ds, "points", read)


def offsets(cache: Cache, pts: MapPoints) -> np.ndarray:
    """Each point's row offset in the images table's current version (-1: its image is gone)."""
    ds = cache.dataset(schema.IMAGES)

    def align() -> np.ndarray:
        images = ds.to_table(columns=["id", "_rowoffset"])
        if len(images) == len(pts.ids) and images.column("id").combine_chunks().equals(pts.ids):
            return images.column("_rowoffset").to_numpy()  # laid out in the table's order, and still so
        where = pc.index_in(pts.ids, images.column("id")).to_numpy(zero_copy_only=False)
        found = ~np.isnan(where.astype(np.float64)) if where.dtype.kind == "f" else np.ones(len(where), bool)
        rows = images.column("_rowoffset").to_numpy()
        out = np.full(len(pts.ids), -1, np.int64)
        out[found] = rows[np.nan_to_num(where[found]).astype(np.int64)]
        return out

    return cache.kept("map", ds, ("offsets", pts.key), align)


def unplaced(cache: Cache, pts: MapPoints | None) -> int:
    """How many cached images have no place on the map (counted: images are never removed)."""
    total = cache.dataset(schema.IMAGES).count_rows() if cache.has_images() else 0
    return max(0, total - (0 if pts is None else len(pts.ids)))


def colours(cache: Cache, pts: MapPoints, head: str, by: str) -> np.ndarray:
    """One colour array in point order: "confidence" float32 (NaN: not scored, or the image is gone);
    "reason" uint8 pairs (accept label index, reject label index; `NO_LABEL` where unscored), the
    page picking the side at its threshold; "label" uint8: 0 none, 1 accept, 2 reject, 3 + i the
    label LABELS[i]."""
    if by not in COLOURS:
        raise MapError(f"colour by {by!r}: use one of {', '.join(COLOURS)}")
    if by == "label":
        return _curated(cache, pts)
    rows = offsets(cache, pts)
    ok = rows >= 0
    cols = registry.columns(cache, head)
    ds = cache.dataset(schema.IMAGES)
    if by == "confidence":
        values = ds.to_table(columns=[cols.confidence]).column(0).to_numpy(zero_copy_only=False).astype(np.float32)
        out = np.full(len(rows), np.nan, np.float32)
        out[ok] = values[rows[ok]]
        return out
    out = np.full((len(rows), 2), NO_LABEL, np.uint8)
    for side, column in enumerate((cols.accept_label, cols.reject_label)):
        codes = pc.index_in(ds.to_table(columns=[column]).column(0), pa.array(LABELS)).fill_null(NO_LABEL)
        out[ok, side] = codes.to_numpy(zero_copy_only=False).astype(np.uint8)[rows[ok]]
    return out.reshape(-1)


def _curated(cache: Cache, pts: MapPoints) -> np.ndarray:
    labels = cache.read(schema.LABELS, ["id", "label"])
    out = np.zeros(len(pts.ids), np.uint8)
    if not len(labels):
        return out
    where = pc.index_in(labels.column("id"), pts.ids)
    names = ["accept", "reject", *LABELS]
    codes = pc.index_in(labels.column("label"), pa.array(names)).fill_null(-1).to_numpy(zero_copy_only=False) + 1
    at = where.to_numpy(zero_copy_only=False)
    placed = ~np.isnan(at.astype(np.float64))
    out[np.nan_to_num(at[placed]).astype(np.int64)] = codes[placed].astype(np.uint8)
    return out


def within(pts: MapPoints, polygon: np.ndarray) -> np.ndarray:
    """The indices (ascending) of the points inside `polygon` ((M, 2) vertices in layout units,
    closed implicitly; even-odd rule: a point exactly on an edge may fall either side)."""
    poly = np.asarray(polygon, np.float64).reshape(-1, 2)
    if len(poly) < 3:
        return np.zeros(0, np.int64)
    lo, hi = poly.min(0), poly.max(0)
    cand = np.flatnonzero(((pts.xy >= lo) & (pts.xy <= hi)).all(1))  # the polygon's bounding box first
    x, y = pts.xy[cand, 0].astype(np.float64), pts.xy[cand, 1].astype(np.float64)
    inside = np.zeros(len(cand), bool)
    for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < at)
    return cand[inside]
