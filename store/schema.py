"""The feature cache's tables and columns (schema version 5), described once: here, in code.

One LanceDB database (a local folder or an object-store URI) holds eight tables: ``images`` (one
row per unique image content, `images_schema`), ``files`` (one row per path, for incremental
ingest), ``failures`` (one row per unreadable path), ``heads`` (one row per named head),
``labels`` (curator labels), ``layout`` (each image's place on the map), ``layout_model`` (the
fitted map that places new images) and ``meta`` (key/value strings). Each field's comment below
says what it holds.

A head's scores are six columns of ``images`` (`SCORE_TYPES`) named with a column prefix P:
P_decision, P_confidence, and its labels, class logits and free units. Thresholds are never
stored: accepted = confidence > T, label = the accept or reject label. A head scored from another
head's v and f (a finetune of it: the two share every layer a finetune leaves alone) stores only
its decision and confidence; its labels, v and f are the other head's, read from that head's
columns (`HeadColumns`: the registry records where). A head scored before schema version 2 has no
P_free column.

Paths (``images.paths``, ``files.path``, ``failures.path``) are absolute, and stored losslessly as
valid UTF-8 text (`path_to_column`, `path_from_column`). Linux file names are bytes, which need
not be UTF-8 (Python keeps such bytes as surrogate escapes, which Arrow's strings cannot hold):

- a path that is valid UTF-8 is stored as it is;
- any other is stored as its ``file:`` URI (RFC 8089) with every byte outside ASCII letters,
  digits, ``/`` and ``_.-~`` percent-encoded: ``/art/caf<0xE9>.png`` → ``file:///art/caf%E9.png``.
  So is a path that itself starts with ``file://`` (never an absolute one), so the two kinds
  never collide. The stored text is what queries and exports show, and what `faramir similar`
  and label files accept back.

The unenforced primary key of every table is declared in its schema (`PRIMARY_KEY`), so that
processes creating a cache at the same moment pass LanceDB identical schemas.

Versions: `SCHEMA_VERSION` is stored in ``meta``; `faramir.store.cache.Cache.open` refuses a
cache whose version is newer, with a message to upgrade faramir, and migrates an older one
(`faramir.store.migrations`, which says what each step changed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

import numpy as np
import pyarrow as pa

from faramir.config import N_CLASSES, N_FREE, FaramirConfig

SCHEMA_VERSION = 5

IMAGES = "images"
FILES = "files"
FAILURES = "failures"
HEADS = "heads"
LABELS = "labels"
LAYOUT = "layout"
LAYOUT_MODEL = "layout_model"
META = "meta"

DEFAULT_HEAD = "faramir-v1"  # the released head, scored at ingest

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Field metadata declaring a table's key its (unenforced) primary key, as LanceDB's
# `set_unenforced_primary_key` writes it. Without a primary key, concurrent merge_insert calls
# that insert the same new key can both succeed and leave duplicate rows.
PRIMARY_KEY = {"lance-schema:unenforced-primary-key:position": "1"}
_URI = "file://"

CONTENT_ID = re.compile(r"^[0-9a-f]{64}$")  # an image's id: the sha256 of its bytes, lowercase hex

EMBEDDING_COLUMNS = {"faramir": "faramir_embedding", "siglip": "siglip_embedding"}
HEAD_INPUTS = ["faramir_embedding", "aesthetic_features", "quality_features"]  # what a head reads


def _vec(n: int) -> pa.DataType:
    return pa.list_(pa.float32(), n)


def vectors(column: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """A fixed_size_list<float32> column as a (N, dim) float32 array (dim: the list size by
    default), without copying when it can."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim or column.type.list_size)


def images_schema(cfg: FaramirConfig, head_prefixes: list[str] = ()) -> pa.Schema:
    """The ``images`` table for embeddings of `cfg`'s widths, with the six score columns of each
    of `head_prefixes`."""
    fields = [
        pa.field("id", pa.string(), nullable=False, metadata=PRIMARY_KEY),  # sha256 of the file bytes (hex)
        pa.field("paths", pa.list_(pa.string())),  # every path the content was seen at (absolute)
        pa.field("size", pa.int64()),  # bytes
        pa.field("mtime_ns", pa.int64()),  # modification time of the path last seen
        pa.field("width", pa.int32()),  # pixels as stored (EXIF orientation ignored, as upstream)
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),  # Pillow's format name (JPEG, PNG, ...)
        pa.field("mode", pa.string()),  # Pillow's mode of the file (RGB, RGBA, P, LA, ...)
        pa.field("faramir_embedding", _vec(cfg.backbone_dim)),  # FARAMIR attention pool (head input)
        pa.field("siglip_embedding", _vec(cfg.backbone_dim)),  # stock SigLIP attention pool
        pa.field("aesthetic_features", _vec(cfg.aesthetic_dim)),  # aesthetic v2.5 features (head input)
        pa.field("aesthetic_score", pa.float32()),  # aesthetic v2.5 score, about 1-10
        pa.field("quality_features", _vec(cfg.quality_dim)),  # ARNIQA features (head input)
        pa.field("experts_fingerprint", pa.string()),  # the weights and preprocessing that made the row
        pa.field("precision", pa.string()),  # fp32 or bf16
        pa.field("ingested_at", TIMESTAMP),
    ]
    for prefix in head_prefixes:
        fields.extend(score_fields(prefix))
    return pa.schema(fields)


SCORE_TYPES = {  # a head's score columns, in order: P_decision, P_confidence, ...
    "decision": pa.float32(),  # decision logit d
    "confidence": pa.float32(),  # sigmoid(d)
    "accept_label": pa.string(),  # best accept-side label (argmax of v[0:9])
    "reject_label": pa.string(),  # best reject-side label (9 + argmax of v[9:30])
    "logits": _vec(N_CLASSES),  # gated class logits v
    "free": _vec(N_FREE),  # free units f (with v, the decision layers' input)
}
SCORES = tuple(SCORE_TYPES)
OWN_SCORES = SCORES[:2]  # a head's own: its decision and confidence
SHARED_SCORES = SCORES[2:]  # functions of v and f: shared by heads whose frozen parts are equal


@dataclass(frozen=True)
class HeadColumns:
    """Where one registered head's six score columns are: its decision and confidence under its
    own `prefix`; its labels, v and f under `shared` (its own prefix, or that of the head whose
    v and f it was scored from)."""

    prefix: str
    shared: str

    @classmethod
    def of(cls, record: dict) -> HeadColumns:
        """The columns of a ``heads`` record."""
        return cls(record["prefix"], record.get("shared_prefix") or record["prefix"])

    def column(self, score: str) -> str:
        """The column of one of `SCORES` ("decision", "logits", ...)."""
        return f"{self.prefix if score in OWN_SCORES else self.shared}_{score}"

    @property
    def names(self) -> list[str]:
        """All six, in `SCORES` order."""
        return [self.column(score) for score in SCORES]

    @property
    def own(self) -> list[str]:
        """The columns this head writes when it shares another head's v and f: the decision and
        confidence only; else all six."""
        return [f"{self.prefix}_{s}" for s in (OWN_SCORES if self.shares else SCORES)]

    @property
    def shares(self) -> bool:
        return self.shared != self.prefix

    decision = property(lambda self: self.column("decision"))
    confidence = property(lambda self: self.column("confidence"))
    accept_label = property(lambda self: self.column("accept_label"))
    reject_label = property(lambda self: self.column("reject_label"))
    logits = property(lambda self: self.column("logits"))
    free = property(lambda self: self.column("free"))


def score_fields(prefix: str) -> list[pa.Field]:
    return [pa.field(f"{prefix}_{name}", type_) for name, type_ in SCORE_TYPES.items()]


_SCORE_SUFFIXES = tuple(f"_{name}" for name in SCORES)


def is_score_column(name: str) -> bool:
    """Whether `name` is one of a head's score columns (under any prefix)."""
    return name.startswith("s_") and name.endswith(_SCORE_SUFFIXES)


FILES_SCHEMA = pa.schema([  # for incremental ingest: an unchanged path + size + mtime is not read
    pa.field("path", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("id", pa.string()),  # the content read there
    pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("seen_at", TIMESTAMP),
])

FAILURES_SCHEMA = pa.schema([  # unreadable paths, retried once they change
    pa.field("path", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("reason", pa.string()),  # one line, with the fix
    pa.field("failed_at", TIMESTAMP),
])

HEADS_SCHEMA = pa.schema([
    pa.field("name", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("prefix", pa.string()),  # its score columns' prefix (a rescore gets a new one)
    pa.field("fingerprint", pa.string()),  # sha256 of its norm.* + head.* tensors
    pa.field("pool_fingerprint", pa.string()),  # its checkpoint's attn_pool.*, "" for a head-only file
    pa.field("source", pa.string()),  # the checkpoint file it came from
    pa.field("created_at", TIMESTAMP),
    pa.field("checkpoint", pa.binary()),  # safetensors bytes of norm.* + head.*, so ingest can score new rows
    # norm.* + head.* outside the layers a finetune trains: heads sharing it share v and f (version 2)
    pa.field("frozen_fingerprint", pa.string()),
    # the prefix its labels, v and f are read under: another head's, for a head scored from that
    # head's v and f; null: its own (version 4). Fields are last where a migration adds them.
    pa.field("shared_prefix", pa.string()),
])

LABELS_SCHEMA = pa.schema([  # curator labels, for finetuning and evaluation
    pa.field("id", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("label", pa.string()),  # accept, reject or one of the 30 label names
    pa.field("source", pa.string()),  # the file imported, or "gallery"
    pa.field("imported_at", TIMESTAMP),
])

LAYOUT_SCHEMA = pa.schema([  # the map (`faramir map`): one row per image placed (version 5)
    pa.field("id", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("x", pa.float32()),  # its place on the 2-D layout (UMAP's units)
    pa.field("y", pa.float32()),
    pa.field("fit", pa.int64()),  # the layout_model row that placed it
])

LAYOUT_MODEL_SCHEMA = pa.schema([  # the fitted map, to place images ingested later (version 5)
    pa.field("fit", pa.int64(), nullable=False, metadata=PRIMARY_KEY),  # when it was fitted (ns)
    pa.field("embedding", pa.string()),  # faramir or siglip
    pa.field("sample", pa.int64()),  # rows it was fitted on
    pa.field("fitted_at", TIMESTAMP),
    pa.field("model", pa.large_binary()),  # `faramir.store.map.model.LayoutModel` as .npz bytes (arrays, no pickle)
])

META_SCHEMA = pa.schema([  # schema_version, config (FaramirConfig JSON), experts_fingerprint,
    # pool_fingerprint, weights_generated (non-empty when the cache was built from generated weights)
    pa.field("key", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("value", pa.string()),
])

_HEAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def valid_head_name(name: str) -> bool:
    """Head names: letters, digits, '.', '_', '-'; at most 64; not starting with punctuation."""
    return bool(_HEAD_NAME.match(name))


def new_prefix(name: str, taken: set[str]) -> str:
    """A fresh SQL-safe column prefix for a head; a re-scored head gets a new one (atomic swap)."""
    base = "s_" + re.sub(r"[^a-z0-9]", "_", name.lower())[:40]
    n = 1
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"


def path_to_column(path: str) -> str:
    """A file path as a path column stores it: itself when it is valid UTF-8, else its file: URI
    (see the module's notes). `path` is as Python's os functions give it: bytes that are not
    UTF-8 as surrogate escapes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if not path.startswith(_URI):
            return path
    return _URI + quote(os.fsencode(path), safe="/")


def path_from_column(text: str) -> str:
    """The file path a path column's `text` stands for (the inverse of `path_to_column`)."""
    return os.fsdecode(unquote_to_bytes(text[len(_URI):])) if text.startswith(_URI) else text
