"""The feature cache's tables and columns (schema version 3).

One LanceDB database (a local folder or an object-store URI) holds these tables:

``images``: one row per unique image content.
    id                   string, not null  sha256 of the file bytes (hex); the primary key
    paths                list<string>      every path the content was seen at (absolute)
    size                 int64             bytes
    mtime_ns             int64             modification time of the path last seen
    width, height        int32             pixels as stored (EXIF orientation ignored, as upstream)
    format               string            Pillow format name (JPEG, PNG, ...)
    mode                 string            Pillow mode of the file (RGB, RGBA, P, LA, ...)
    faramir_embedding    fixed_size_list<float32>[D]    FARAMIR attention pool (head input)
    siglip_embedding     fixed_size_list<float32>[D]    stock SigLIP attention pool
    aesthetic_features   fixed_size_list<float32>[16]   aesthetic v2.5 features (head input)
    aesthetic_score      float32           aesthetic v2.5 score, about 1-10
    quality_features     fixed_size_list<float32>[128]  ARNIQA features (head input)
    experts_fingerprint  string            weights + preprocessing that made the row
    precision            string            fp32 or bf16
    ingested_at          timestamp[us, UTC]
  plus, for every head registered in ``heads``, score columns named with its column prefix P:
    P_decision           float32           decision logit d
    P_confidence         float32           sigmoid(d)
    P_accept_label       string            best accept-side label (argmax of v[0:9])
    P_reject_label       string            best reject-side label (9 + argmax of v[9:30])
    P_logits             fixed_size_list<float32>[30]   gated class logits v
    P_free               fixed_size_list<float32>[2]    free units f (with v, the decision's input)
  Thresholds are never stored: accepted = P_confidence > T, label = the accept or reject label.
  A head scored before schema version 2 has no P_free column (its rows are scored as before).

``files``: one row per path, for incremental ingest (unchanged path + size + mtime: not read).
    path string not null (primary key), id string, size int64, mtime_ns int64, seen_at timestamp

``failures``: one row per unreadable path.
    path string not null (primary key), size int64, mtime_ns int64, reason string, failed_at timestamp

``heads``: one row per named head.
    name string not null (primary key), prefix string, fingerprint string (norm.* + head.*),
    pool_fingerprint string (attn_pool.* of its checkpoint, or "" for a head-only file),
    source string (file it came from), created_at timestamp,
    checkpoint binary (safetensors bytes of norm.* + head.*, so ingest can score new rows),
    frozen_fingerprint string (norm.* + head.* outside the layers a finetune trains: heads that
    share it share v and f, so rescoring one needs only the other's P_logits and P_free, and its
    P_accept_label, P_reject_label, P_logits and P_free read the other's data: see
    `faramir.store.column_aliases`)

``labels``: curator labels for finetuning and evaluation.
    id string not null (primary key), label string, source string, imported_at timestamp

``meta``: key/value strings: schema_version, config (FaramirConfig JSON), experts_fingerprint,
    pool_fingerprint, weights_generated (non-empty when the cache was built with fake weights).

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

Versions: `SCHEMA_VERSION` is stored in ``meta``; `faramir.store.cache.Cache.open` refuses a cache whose
version is newer, with a message to upgrade faramir, and migrates an older one (`faramir.store.migrations`):

- 1 → 2 added ``heads.frozen_fingerprint`` (computed for existing heads from their checkpoint)
  and the P_free columns (written for heads scored from then on).
- 2 → 3 (paths that are not UTF-8 as ``file:`` URIs): an older cache cannot hold such a path (its
  ingest failed on them) and its paths are absolute, so every stored path already means the same
  under version 3: only the version is raised, so that an older faramir refuses a cache whose
  ``file:`` paths it would take literally. Older versions recorded the experts fingerprint with
  the trunk's file bytes; ingest recognises such a cache (`faramir.weights.file_bytes_experts_fingerprint`).
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote_to_bytes

import pyarrow as pa

from faramir.config import N_CLASSES, N_FREE, FaramirConfig

SCHEMA_VERSION = 3

IMAGES = "images"
FILES = "files"
FAILURES = "failures"
HEADS = "heads"
LABELS = "labels"
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


def images_schema(cfg: FaramirConfig, head_prefixes: list[str] = ()) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False, metadata=PRIMARY_KEY),
        pa.field("paths", pa.list_(pa.string())),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("faramir_embedding", _vec(cfg.backbone_dim)),
        pa.field("siglip_embedding", _vec(cfg.backbone_dim)),
        pa.field("aesthetic_features", _vec(cfg.aesthetic_dim)),
        pa.field("aesthetic_score", pa.float32()),
        pa.field("quality_features", _vec(cfg.quality_dim)),
        pa.field("experts_fingerprint", pa.string()),
        pa.field("precision", pa.string()),
        pa.field("ingested_at", TIMESTAMP),
    ]
    for prefix in head_prefixes:
        fields.extend(score_fields(prefix))
    return pa.schema(fields)


SCORE_TYPES = {  # a head's score columns, in order: P_decision, P_confidence, ...
    "decision": pa.float32(),
    "confidence": pa.float32(),
    "accept_label": pa.string(),
    "reject_label": pa.string(),
    "logits": _vec(N_CLASSES),
    "free": _vec(N_FREE),
}
SCORES = tuple(SCORE_TYPES)


def score_fields(prefix: str) -> list[pa.Field]:
    return [pa.field(f"{prefix}_{name}", type_) for name, type_ in SCORE_TYPES.items()]


_SCORE_SUFFIXES = tuple(f"_{name}" for name in SCORES)


def is_score_column(name: str) -> bool:
    """Whether `name` is one of a head's score columns (under any prefix)."""
    return name.startswith("s_") and name.endswith(_SCORE_SUFFIXES)


def score_column_names(prefix: str) -> list[str]:
    """The six score columns of the head whose column prefix is `prefix`."""
    return [f.name for f in score_fields(prefix)]


FILES_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("id", pa.string()),
    pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("seen_at", TIMESTAMP),
])

FAILURES_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("reason", pa.string()),
    pa.field("failed_at", TIMESTAMP),
])

HEADS_SCHEMA = pa.schema([
    pa.field("name", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("prefix", pa.string()),
    pa.field("fingerprint", pa.string()),
    pa.field("pool_fingerprint", pa.string()),
    pa.field("source", pa.string()),
    pa.field("created_at", TIMESTAMP),
    pa.field("checkpoint", pa.binary()),
    pa.field("frozen_fingerprint", pa.string()),  # schema version 2; last, where the migration adds it
])

LABELS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False, metadata=PRIMARY_KEY),
    pa.field("label", pa.string()),
    pa.field("source", pa.string()),
    pa.field("imported_at", TIMESTAMP),
])

META_SCHEMA = pa.schema([
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
