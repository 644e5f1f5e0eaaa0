"""One cached image: everything the cache knows about it (its paths, file facts and every head's
scores), the paths a face may open for it, and how many images the cache holds. Lance reads only."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from faramir.config import DEFAULT_THRESHOLD, N_ACCEPT, OUTPUT_NAMES
from faramir.decision import decide
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import QueryError, UnknownImage
from faramir.store.filters import Filter
from faramir.store.heads import registry
from faramir.store.schema import HeadColumns
from faramir.store.sql import sql_str

FACT_COLUMNS = ("size", "mtime_ns", "width", "height", "format", "mode")


def check_id(image_id: str) -> str:
    """`image_id` if it is a content id (64 lowercase hex digits: a sha256), else QueryError."""
    if not isinstance(image_id, str) or not schema.CONTENT_ID.match(image_id):
        raise QueryError(f"{str(image_id)[:80]!r} is not a content id (64 lowercase hex digits)")
    return image_id


# -- pages ------------------------------------------------------------------------------------------


# -- counts -----------------------------------------------------------------------------------------


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


def sources(image_id: str, db: str | os.PathLike | Cache | None = None) -> tuple[list[str], int]:
    """(every path the cache recorded for this content id, the size of its bytes): the only paths
    a face may open, and a file there of another size now is not this content."""
    row = _row(Cache.open(db), image_id, ["paths", "size"])
    return list(row["paths"] or []), row["size"]


def detail(image_id: str, db: str | os.PathLike | Cache | None = None, *, threshold: float = DEFAULT_THRESHOLD) -> ImageDetail:
    """Everything the cache knows about one image: its paths and file facts, the aesthetic score,
    and under every registered head that scored it the confidence, the decision at `threshold`,
    the label and all 31 logits (30 class logits in upstream order, then the decision logit)."""
    threshold = Filter(threshold=threshold).threshold  # checked as every query checks it
    cache = Cache.open(db)
    names = cache.dataset(schema.IMAGES).schema.names
    heads = [(h["name"], cols) for h in registry.heads(cache)
             if {(cols := HeadColumns.of(h)).confidence, cols.logits} <= set(names)]
    columns = ["id", "paths", "aesthetic_score", *FACT_COLUMNS]
    for _, cols in heads:  # a head scored before schema version 2 has no P_free column
        columns += [c for c in cols.names if c in names and c not in columns]
    row = _row(cache, image_id, columns)
    scores = []
    for name, cols in heads:
        confidence = row[cols.confidence]
        if confidence is None:
            continue  # not scored by this head yet
        accepted, label = decide(confidence, row[cols.accept_label], row[cols.reject_label],
                                 threshold)
        scores.append({"head": name, "confidence": confidence, "accepted": bool(accepted), "label": label,
                       "logits": [*row[cols.logits], row[cols.decision]]})
    return ImageDetail(
        id=row["id"], paths=list(row["paths"] or []), aesthetic_score=row["aesthetic_score"],
        **{k: row[k] for k in FACT_COLUMNS}, threshold=threshold, logit_names=list(OUTPUT_NAMES),
        accept_side=N_ACCEPT, scores=scores,
    )


# -- two heads ----------------------------------------------------------------------------------------


def row_count(db: str | os.PathLike | Cache | None = None) -> int:
    """How many images the cache holds (0 before the first ingest)."""
    cache = Cache.open(db)
    return cache.dataset(schema.IMAGES).count_rows() if cache.has_images() else 0
