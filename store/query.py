"""Stage-two queries over cached scores: filters at a threshold, ranking, counts, statistics and
nearest neighbours. Nothing here decodes an image or runs the trunk (except `similar` on an image
the cache has never seen, which ingests it once).

Every query reads one head's score columns (name → column prefix through the ``heads`` table) and
applies the threshold itself; no threshold is ever stored. Upstream's rule: accepted iff
confidence > T, and the label is the best accept-side label when accepted, else the best
reject-side one. Upstream compares a float32 tensor with a Python float, which torch does in
float32, so T is rounded to float32 before it goes into SQL (an exactly representable literal,
so the comparison gives the same answer whatever width the engine compares in).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.config import ACCEPT_LABELS, LABELS
from store import schema
from store.db import Cache, CacheError, sql_str
from store.heads import open_cache

SORTS = ("confidence", "aesthetic")  # top's sort keys (there is no scalar quality score upstream)
EMBEDDINGS = tuple(schema.EMBEDDING_COLUMNS)  # "faramir", "siglip"
DEFAULT_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 … 0.95
RESULT_COLUMNS = ("id", "path", "confidence", "accepted", "label", "aesthetic_score", "decision", "paths")
_ID = re.compile(r"^[0-9a-f]{64}$")


class QueryError(CacheError):
    """A query's arguments cannot be used."""


def f32(value: float) -> float:
    """`value` rounded to float32, as torch rounds a Python scalar compared with a float32 tensor."""
    return float(np.float32(value))


def _sql_float(value: float) -> str:
    return repr(f32(value))  # shortest repr that round-trips: the exact float32 value


@dataclass(frozen=True)
class Filter:
    """Which rows a query keeps, judged by one head at one threshold. Ranges are inclusive."""

    head: str = schema.DEFAULT_HEAD  # registered head whose scores are read
    threshold: float = 0.5  # accepted iff confidence > threshold
    accepted: bool | None = None  # True: accepted only; False: rejected only; None: both
    labels: tuple[str, ...] = ()  # any of these labels (each as the label at this threshold)
    min_confidence: float | None = None
    max_confidence: float | None = None
    min_aesthetic: float | None = None  # aesthetic v2.5 score, about 1-10
    max_aesthetic: float | None = None

    def __post_init__(self):
        if isinstance(self.labels, str):
            object.__setattr__(self, "labels", (self.labels,))
        object.__setattr__(self, "labels", tuple(dict.fromkeys(self.labels)))
        if not (0.0 <= self.threshold <= 1.0):
            raise QueryError(f"threshold {self.threshold}: must be between 0 and 1")
        unknown = [label for label in self.labels if label not in LABELS]
        if unknown:
            raise QueryError(f"unknown label{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"valid labels: {', '.join(LABELS)}")
        if self.accepted is not None:
            wrong = [label for label in self.labels if (label in ACCEPT_LABELS) != self.accepted]
            if wrong and len(wrong) == len(self.labels):
                side = "a rejected" if self.accepted is False else "an accepted"
                raise QueryError(
                    f"label{'s' if len(wrong) > 1 else ''} {', '.join(wrong)} can never be the label of "
                    f"{side} image (accept-side labels: {', '.join(l for l in LABELS if l in ACCEPT_LABELS)})"
                )
        for name in ("min_confidence", "max_confidence"):
            value = getattr(self, name)
            if value is not None and not (0.0 <= value <= 1.0):
                raise QueryError(f"{name.replace('_', ' ')} {value}: must be between 0 and 1")
        for lo, hi in (("min_confidence", "max_confidence"), ("min_aesthetic", "max_aesthetic")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise QueryError(f"{lo.replace('_', ' ')} {a} is above {hi.replace('_', ' ')} {b}")

    def where(self, prefix: str) -> str:
        """The SQL condition over the head's columns (`prefix`_confidence, ...)."""
        conf = f"{prefix}_confidence"
        t = _sql_float(self.threshold)
        parts = []
        if self.accepted is True:
            parts.append(f"{conf} > {t}")
        elif self.accepted is False:
            parts.append(f"{conf} <= {t}")
        if self.labels:
            # An accept-side label is only ever the label of an accepted row, a reject-side one of
            # a rejected row: the general rule reduces to one IN list per side.
            sides = []
            accept = [sql_str(x) for x in self.labels if x in ACCEPT_LABELS]
            reject = [sql_str(x) for x in self.labels if x not in ACCEPT_LABELS]
            if accept:
                sides.append(f"({conf} > {t} AND {prefix}_accept_label IN ({', '.join(accept)}))")
            if reject:
                sides.append(f"({conf} <= {t} AND {prefix}_reject_label IN ({', '.join(reject)}))")
            parts.append("(" + " OR ".join(sides) + ")")
        if self.min_confidence is not None:
            parts.append(f"{conf} >= {_sql_float(self.min_confidence)}")
        if self.max_confidence is not None:
            parts.append(f"{conf} <= {_sql_float(self.max_confidence)}")
        if self.min_aesthetic is not None:
            parts.append(f"aesthetic_score >= {_sql_float(self.min_aesthetic)}")
        if self.max_aesthetic is not None:
            parts.append(f"aesthetic_score <= {_sql_float(self.max_aesthetic)}")
        # Rows not (yet) scored by this head are never returned. Any comparison on the confidence
        # already rejects NULL; the extra IS NOT NULL term would cost a second index lookup
        # (a quarter of a filtered nearest-neighbour search at a million rows).
        if not any(conf in part for part in parts):
            parts.insert(0, f"{conf} IS NOT NULL")
        return " AND ".join(parts)

    def keep(self, confidence: np.ndarray, accept_label: Sequence[str], reject_label: Sequence[str],
             aesthetic: np.ndarray | None = None) -> np.ndarray:
        """The same filter in NumPy over in-memory rows (a reference for tests and benchmarks)."""
        conf = np.asarray(confidence, np.float32)
        t = np.float32(self.threshold)
        accepted = conf > t
        label = np.where(accepted, np.asarray(accept_label, object), np.asarray(reject_label, object))
        keep = ~np.isnan(conf)
        if self.accepted is not None:
            keep &= accepted == self.accepted
        if self.labels:
            keep &= np.isin(label, list(self.labels))
        if self.min_confidence is not None:
            keep &= conf >= np.float32(self.min_confidence)
        if self.max_confidence is not None:
            keep &= conf <= np.float32(self.max_confidence)
        if aesthetic is not None:
            a = np.asarray(aesthetic, np.float32)
            if self.min_aesthetic is not None:
                keep &= a >= np.float32(self.min_aesthetic)
            if self.max_aesthetic is not None:
                keep &= a <= np.float32(self.max_aesthetic)
        return keep


FILTER_FIELDS = tuple(f.name for f in fields(Filter))


def make_filter(filters: dict[str, Any]) -> Filter:
    unknown = sorted(set(filters) - set(FILTER_FIELDS))
    if unknown:
        raise TypeError(f"unknown filter argument(s) {', '.join(unknown)}; use {', '.join(FILTER_FIELDS)}")
    return Filter(**{k: (tuple(v) if k == "labels" and not isinstance(v, str) else v) for k, v in filters.items()})


def head_prefix(cache: Cache, head: str) -> str:
    """The column prefix of a registered head whose columns are in the images table."""
    return _resolve(cache, head)[0]


def _resolve(cache: Cache, head: str):
    """(column prefix of `head`, the images table as a Lance dataset holding its columns)."""
    prefix = cache.head(head)["prefix"]
    ds = dataset(cache)
    if f"{prefix}_confidence" not in ds.schema.names:
        raise QueryError(f"head {head!r} is registered but its columns ({prefix}_*) are missing from "
                         f"{cache.uri}; rescore it with 'faramir rescore --head FILE --name {head}'")
    return prefix, ds


def _score_columns(prefix: str) -> list[str]:
    return [f"{prefix}_confidence", f"{prefix}_decision", f"{prefix}_accept_label", f"{prefix}_reject_label"]


def results(rows: pa.Table, prefix: str, threshold: float, first: Sequence[str] = (),
            extra: Sequence[str] = ()) -> pa.Table:
    """Raw rows (id, paths, aesthetic_score and the head's columns) as result rows:
    `first`, id, path, confidence, accepted, label, aesthetic_score, decision, paths, `extra`."""
    conf = rows.column(f"{prefix}_confidence")
    accepted = pc.greater(conf, pa.scalar(f32(threshold), pa.float32()))
    label = pc.if_else(accepted, rows.column(f"{prefix}_accept_label"), rows.column(f"{prefix}_reject_label"))
    paths = rows.column("paths")
    columns = {name: rows.column(name) for name in first}
    columns.update({
        "id": rows.column("id"),
        "path": pc.list_element(paths, 0) if len(rows) else pa.array([], pa.string()),
        "confidence": conf,
        "accepted": accepted,
        "label": label,
        "aesthetic_score": rows.column("aesthetic_score"),
        "decision": rows.column(f"{prefix}_decision"),
        "paths": paths,
    })
    columns.update({name: rows.column(name) for name in extra})
    return pa.table(columns)


def _retrying(cache: Cache, head: str, run):
    """run(prefix, ds) over one version of the images table (`ds`, a Lance dataset); once more
    if a concurrent rescore of `head` swapped its columns meanwhile."""
    prefix, ds = _resolve(cache, head)
    try:
        return run(prefix, ds)
    except Exception:
        if cache.head(head)["prefix"] == prefix:
            raise
        return run(*_resolve(cache, head))


# -- counting and ranking -----------------------------------------------------------------------


def count(db: str | os.PathLike | Cache | None = None, **filters) -> int:
    """How many cached rows pass the filters (see `Filter`)."""
    cache = open_cache(db)
    f = make_filter(filters)
    return _retrying(cache, f.head, lambda p, ds: ds.count_rows(f.where(p)))


def top(
    db: str | os.PathLike | Cache | None = None,
    *,
    sort: str = "confidence",
    descending: bool = True,
    limit: int | None = 20,
    **filters,
) -> pa.Table:
    """Rows passing the filters (see `Filter`), ranked by confidence (the "aesthetic gradient") or
    aesthetic score, best first unless `descending=False`; at most `limit` (None: all). Columns:
    id, path, confidence, accepted, label, aesthetic_score, decision, paths.

    Confidence ties (sigmoid saturates to 1.0 in float32) are broken by the decision logit, which
    orders the same way, then by id."""
    if sort not in SORTS:
        raise QueryError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
    if limit is not None and limit < 1:
        raise QueryError(f"limit {limit}: must be at least 1")
    cache = open_cache(db)
    f = make_filter(filters)
    return _retrying(cache, f.head, lambda p, ds: _top(ds, p, f, sort, descending, limit))


def _top(ds, prefix: str, f: Filter, sort: str, descending: bool, limit: int | None) -> pa.Table:
    # Two passes over one table version: the filter and the sort keys of every passing row (two
    # float columns: 8 MB at a million rows), then the full rows of the best `limit` only.
    decision = f"{prefix}_decision"
    keys = [decision] if sort == "confidence" else ["aesthetic_score", decision]
    cand = ds.to_table(columns=[*dict.fromkeys(keys), "_rowoffset"], filter=f.where(prefix))
    sign = -1.0 if descending else 1.0
    first = sign * cand.column(keys[0]).to_numpy().astype(np.float64)
    if limit is not None and len(first) > limit:
        kth = np.partition(first, limit - 1)[limit - 1]
        cand = cand.filter(pa.array(first <= kth))  # the best `limit`, and any rows tied with the last
    rows = ds.take(cand.column("_rowoffset").to_numpy(),
                   columns=["id", "paths", "aesthetic_score", *_score_columns(prefix)])
    sort_keys = [np.asarray(rows.column("id").to_pylist(), dtype=str)]  # last tie-break: id
    sort_keys += [sign * rows.column(k).to_numpy().astype(np.float64) for k in reversed(keys)]
    order = np.lexsort(sort_keys)[:limit]
    return results(rows.take(pa.array(order, pa.int64())), prefix, f.threshold)


def dataset(cache: Cache):
    """The images table as a Lance dataset (latest version), its index cache kept between queries
    (`Cache.dataset`)."""
    return cache.dataset(schema.IMAGES)


# -- statistics ---------------------------------------------------------------------------------


def stats(
    db: str | os.PathLike | Cache | None = None,
    *,
    bins: int = 20,
    sweep: Sequence[float] = DEFAULT_SWEEP,
    **filters,
) -> dict:
    """Counts at the threshold over the rows passing the filters: total, accepted, rejected, per
    label; a confidence histogram (`bins` equal bins over [0, 1]); and a threshold sweep (how many
    pass at each threshold of `sweep`, plus the filter's own)."""
    if bins < 1:
        raise QueryError(f"bins {bins}: must be at least 1")
    cache = open_cache(db)
    f = make_filter(filters)
    for t in sweep:
        if not 0.0 <= t <= 1.0:
            raise QueryError(f"sweep threshold {t}: must be between 0 and 1")

    def run(prefix: str, ds) -> dict:
        cols = [f"{prefix}_confidence", f"{prefix}_accept_label", f"{prefix}_reject_label"]
        rows = ds.to_table(columns=cols, filter=f.where(prefix))
        conf = rows.column(cols[0]).to_numpy()
        t = np.float32(f.threshold)
        accepted = conf > t
        label = pc.if_else(pa.array(accepted), rows.column(cols[1]), rows.column(cols[2]))
        counts = dict(zip(*(lambda vc: (vc.field("values").to_pylist(), vc.field("counts").to_pylist()))(
            pc.value_counts(label))))
        hist, edges = np.histogram(conf, bins=bins, range=(0.0, 1.0))
        ordered = np.sort(conf)
        thresholds = sorted(set(round(float(x), 6) for x in sweep) | {f.threshold})
        return {
            "head": f.head,
            "threshold": f.threshold,
            "total": int(len(conf)),
            "accepted": int(accepted.sum()),
            "rejected": int(len(conf) - accepted.sum()),
            "labels": {name: int(counts.get(name, 0)) for name in LABELS},
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]},
            "sweep": [
                {"threshold": x,
                 "accepted": int(len(ordered) - np.searchsorted(ordered, np.float32(x), side="right"))}
                for x in thresholds
            ],
        }

    return _retrying(cache, f.head, run)


# -- nearest neighbours -------------------------------------------------------------------------


def reference_vector(cache: Cache, ref: str, embedding: str = "faramir", *, ingest: bool = True,
                     **ingest_options) -> tuple[str, np.ndarray]:
    """(id, embedding) of REF: a cached image's id, a path the cache has seen, or an image file
    (hashed: content cached under another path is found; otherwise it is ingested once)."""
    column = _embedding_column(embedding)
    table = cache.images()
    if _ID.match(ref.lower()):
        found = _vector_of(table, ref.lower(), column)
        if found is not None:
            return ref.lower(), found
    if not ref.startswith(("http://", "https://")):
        path = os.path.abspath(os.path.expanduser(ref))
        hit = (cache.table(schema.FILES).search().where(f"path = {sql_str(path)}")
               .select(["id"]).limit(1).to_arrow())
        if len(hit):
            found = _vector_of(table, hit.column("id")[0].as_py(), column)
            if found is not None:
                return hit.column("id")[0].as_py(), found
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            found = _vector_of(table, digest, column)
            if found is None and ingest:
                _ingest_one(cache, path, **ingest_options)
                found = _vector_of(cache.images(), digest, column)
                if found is None:
                    raise QueryError(f"{ref}: could not be cached (see the ingest's failures: "
                                     f"'faramir ingest {ref} --db {cache.uri}' says why)")
            if found is not None:
                return digest, found
    if _ID.match(ref.lower()):
        raise QueryError(f"{ref}: no cached image has this id in {cache.uri}")
    raise QueryError(f"{ref}: not a cached image's id or path, nor an image file here")


def cosine_distances(query: np.ndarray, column: pa.ChunkedArray) -> np.ndarray:
    """1 - cosine similarity of each row to `query`, in float64 (exactly 0 for the same vector;
    LanceDB's float32 distance leaves about 6e-8 there). Only the k results are recomputed."""
    q = np.asarray(query, np.float64)
    if len(column) == 0:
        return np.zeros(0)
    x = column.combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(column), -1)
    same = (x == np.asarray(query, x.dtype)).all(axis=1)
    x = x.astype(np.float64)
    cos = (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    return np.where(same, 0.0, np.clip(1.0 - cos, 0.0, 2.0))


def _embedding_column(embedding: str) -> str:
    if embedding not in schema.EMBEDDING_COLUMNS:
        raise QueryError(f"embedding {embedding!r}: use one of {', '.join(EMBEDDINGS)}")
    return schema.EMBEDDING_COLUMNS[embedding]


def _vector_of(table, image_id: str, column: str) -> np.ndarray | None:
    rows = table.to_lance().to_table(columns=[column], filter=f"id = {sql_str(image_id)}", limit=1)
    if not len(rows) or rows.column(column)[0].as_py() is None:
        return None
    return rows.column(column).combine_chunks().values.to_numpy(zero_copy_only=False)


def _ingest_one(cache: Cache, path: str, **options) -> None:
    from store.ingest import ingest

    for _ in ingest([path], db=cache.uri, workers=0, **options):  # one file: decode it here, no fork
        pass


def similar(
    ref: str | np.ndarray,
    db: str | os.PathLike | Cache | None = None,
    *,
    k: int = 10,
    embedding: str = "faramir",
    exact: bool = False,
    nprobes: int | None = None,
    refine_factor: int | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str = "auto",
    **filters,
) -> pa.Table:
    """The `k` nearest cached images to REF by cosine distance of the FARAMIR or stock SigLIP
    embedding, among the rows passing the filters (see `Filter`), nearest first. REF is a cached
    image's id or path, an image file (ingested once if new: `weights_dir`, `device`), or a vector.

    One LanceDB query: the filter is a prefilter of the vector search, so the k results all pass
    it. With an ANN index the search is approximate (`nprobes`, `refine_factor` tune it); rows
    added since the index was built are searched exactly and merged in; `exact` bypasses the
    index. Columns: distance (1 - cosine similarity), then as `top`."""
    from store.index import NPROBES, REFINE_FACTOR

    if k < 1:
        raise QueryError(f"k {k}: must be at least 1")
    cache = open_cache(db)
    f = make_filter(filters)
    column = _embedding_column(embedding)
    if isinstance(ref, np.ndarray):
        vector = np.asarray(ref, np.float32)
    else:
        _, vector = reference_vector(cache, ref, embedding, weights_dir=weights_dir, device=device)

    def run(prefix: str, ds) -> pa.Table:
        nearest = {"column": column, "q": vector, "k": k, "metric": "cosine"}
        if exact:
            nearest["use_index"] = False
        else:
            nearest["nprobes"] = nprobes or NPROBES
            nearest["refine_factor"] = refine_factor or REFINE_FACTOR
        rows = ds.to_table(
            nearest=nearest, filter=f.where(prefix), prefilter=True,
            columns=["id", "paths", "aesthetic_score", *_score_columns(prefix), column, "_distance"],
        )
        distance = cosine_distances(vector, rows.column(column))
        order = np.argsort(distance, kind="stable")  # the engine's order, exact ties aside
        rows = rows.drop_columns([column, "_distance"]).append_column("distance", pa.array(distance))
        return results(rows.take(pa.array(order, pa.int64())), prefix, f.threshold, first=["distance"])

    return _retrying(cache, f.head, run)
