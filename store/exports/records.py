"""The fields of one exported sample, written once for every training-set format: the ``.json`` of
a WebDataset sample and the columns of a Hugging Face dataset are the same record.

A record, in this order:

    id                  the content id (sha256 of the image bytes, hex)
    path                the path the bytes were read from (as the cache stores paths)
    paths               every path the content was seen at
    head, threshold     whose scores, and the threshold they are judged at
    decision            "accept" or "reject" at the threshold; `accepted` the same as a bool
    confidence          sigmoid of the head's decision logit
    reason              the label at the threshold: one of upstream's 30 (accept or reject side)
    aesthetic_score     aesthetic v2.5, about 1-10
    curator_label       the curator's label (accept, reject or one of the 30), or null
    width, height, format, size, ingested_at   the file as ingested
    experts_fingerprint the weights and preprocessing that made the row's vectors
    head_fingerprint    the head's weights (norm.* and head.*)
    weights_generated   whether the weights were GENERATED (then every score means nothing)
    logits              with `with_logits`: the head's 31 raw outputs, cat(v, d): the 30 class
                        logits in `faramir.config.LABELS` order, then the decision logit
    faramir_embedding, siglip_embedding, aesthetic_features, quality_features
                        with `with_embeddings`: the cached vectors (float32)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.config import N_CLASSES
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.filters import Filter
from faramir.store.heads import registry
from faramir.store.schema import HeadColumns

EMBEDDING_COLUMNS = ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features")
FACTS = ("width", "height", "format", "size", "ingested_at", "mtime_ns", "experts_fingerprint")


class Records:
    """Result rows (`faramir.store.heads.columns.results` with `extra`) → record tables of one
    fixed `schema`, for one cache, head and threshold."""

    def __init__(self, cache: Cache, f: Filter, cols: HeadColumns, *, with_logits: bool, with_embeddings: bool):
        self.f, self.cols = f, cols
        self.with_logits, self.with_embeddings = with_logits, with_embeddings
        self.head_fingerprint = registry.head(cache, f.head).get("fingerprint") or ""
        self.generated = bool(cache.get_meta("weights_generated"))
        labels = cache.read(schema.LABELS, ["id", "label"])  # a curator's labels: a few thousand, read once
        self.label_ids, self.label_values = labels.column("id").combine_chunks(), labels.column("label")
        images = cache.dataset(schema.IMAGES).schema
        self.schema = pa.schema([
            ("id", pa.string()), ("path", pa.string()), ("paths", pa.list_(pa.string())), ("head", pa.string()),
            ("threshold", pa.float64()), ("decision", pa.string()), ("accepted", pa.bool_()),
            ("confidence", pa.float32()), ("reason", pa.string()), ("aesthetic_score", pa.float32()),
            ("curator_label", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
            ("format", pa.string()), ("size", pa.int64()), ("ingested_at", schema.TIMESTAMP),
            ("experts_fingerprint", pa.string()), ("head_fingerprint", pa.string()),
            ("weights_generated", pa.bool_()),
            *([("logits", pa.list_(pa.float32(), N_CLASSES + 1))] if with_logits else []),
            *([(name, images.field(name).type) for name in EMBEDDING_COLUMNS] if with_embeddings else []),
        ])

    @property
    def extra(self) -> list[str]:
        """The columns to read beside a result row's."""
        return [*FACTS, *([self.cols.logits] if self.with_logits else []),
                *(EMBEDDING_COLUMNS if self.with_embeddings else [])]

    @property
    def vectors(self) -> list[str]:
        """The record's vector columns (a WebDataset sample keeps them as .npy files)."""
        return list(EMBEDDING_COLUMNS) if self.with_embeddings else []

    def table(self, rows: pa.Table) -> pa.Table:
        """The records of result rows, in `schema`; `path` is each row's first path until the
        writer sets the one it read."""
        n = len(rows)
        accepted = rows.column("accepted")
        found = pc.index_in(rows.column("id"), value_set=self.label_ids)
        columns = {
            "id": rows.column("id"), "path": rows.column("path"), "paths": rows.column("paths"),
            "head": pa.array([self.f.head] * n, pa.string()),
            "threshold": pa.array([self.f.threshold] * n, pa.float64()),
            "decision": pc.if_else(accepted, "accept", "reject"), "accepted": accepted,
            "confidence": rows.column("confidence"), "reason": rows.column("label"),
            "aesthetic_score": rows.column("aesthetic_score"),
            "curator_label": self.label_values.take(found) if len(self.label_values) else pa.nulls(n, pa.string()),
            **{name: rows.column(name) for name in ("width", "height", "format", "size", "ingested_at",
                                                     "experts_fingerprint")},
            "head_fingerprint": pa.array([self.head_fingerprint] * n, pa.string()),
            "weights_generated": pa.array([self.generated] * n, pa.bool_()),
        }
        if self.with_logits:
            columns["logits"] = _logits(rows.column(self.cols.logits), rows.column("decision"))
        for name in self.vectors:
            columns[name] = rows.column(name)
        return pa.table(columns).cast(self.schema)


def _logits(v: pa.ChunkedArray, d: pa.ChunkedArray) -> pa.FixedSizeListArray:
    """cat(v, d) per row: the head's 31 outputs, as upstream returns them."""
    both = np.concatenate([matrix(v), d.to_numpy().reshape(-1, 1)], axis=1).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(both.reshape(-1)), N_CLASSES + 1)


def matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size vector column as a (rows, width) float32 array."""
    array = column.combine_chunks()
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size)


def npy_bytes(vector: np.ndarray) -> bytes:
    """One vector as the bytes of a .npy file (float32, 1-D), as numpy.load reads it."""
    from io import BytesIO

    buf = BytesIO()
    np.save(buf, np.ascontiguousarray(vector, np.float32), allow_pickle=False)
    return buf.getvalue()
