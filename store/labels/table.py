"""Curator labels beside the cache: list and remove them; set, unset and read them by content id
(the gallery's writes and reads); the labelled rows a finetune or an evaluation uses.

A label is `accept`, `reject` or one of the 30 upstream label names (stored canonically; a
30-name label counts as accept iff it is accept-biased). Importing label files is
`faramir.store.labels.files`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from faramir.files import sha256_file
from faramir.labels import canonical_label, label_is_accept
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import LabelsError
from faramir.store.sql import id_filters, sql_in, sql_str


def path_index(cache: Cache) -> dict[str, str]:
    files = cache.read(schema.FILES, ["path", "id"])
    return dict(zip(files.column("path").to_pylist(), files.column("id").to_pylist()))


def list_labels(db: str | os.PathLike | Cache | None = None) -> pa.Table:
    """id, label, accept (bool), path (first cached path), source, imported_at; by import time."""
    cache = Cache.open(db)
    labels = cache.read(schema.LABELS)
    if len(labels) == 0:
        return pa.table({"id": pa.array([], pa.string()), "label": pa.array([], pa.string()),
                         "accept": pa.array([], pa.bool_()), "path": pa.array([], pa.string()),
                         "source": pa.array([], pa.string()),
                         "imported_at": pa.array([], schema.TIMESTAMP)})
    first_path: dict[str, str] = {}
    for p, i in sorted(path_index(cache).items()):
        first_path.setdefault(i, p)
    labels = labels.sort_by([("imported_at", "ascending"), ("id", "ascending")])
    ids = labels.column("id").to_pylist()
    return pa.table({
        "id": labels.column("id"),
        "label": labels.column("label"),
        "accept": pa.array([label_is_accept(x) for x in labels.column("label").to_pylist()]),
        "path": pa.array([first_path.get(i) for i in ids], pa.string()),
        "source": labels.column("source"),
        "imported_at": labels.column("imported_at"),
    })


def remove_labels(refs: list[str] = (), *, all: bool = False, source: str | None = None,
                  db: str | os.PathLike | Cache | None = None) -> int:
    """Remove the labels of these images (ids or paths), of one `source`, or `all`; returns how many."""
    cache = Cache.open(db)
    cache.check_writable()
    table = cache.table(schema.LABELS)
    before = table.count_rows()
    if all:
        table.delete("true")
    elif source is not None:
        table.delete(f"source = {sql_str(source)}")
    else:
        paths, ids = path_index(cache), cache.ids()
        targets = []
        for ref in refs:
            content_id, reason = resolve_ref(ref, Path.cwd(), paths, ids)
            if content_id is None:
                raise LabelsError(f"{ref}: {reason}")
            targets.append(content_id)
        if targets:
            table.delete(sql_in("id", targets))
    return before - table.count_rows()


LABEL_FRAGMENTS = 64  # compact the labels table past this many fragments (one per write)


@dataclass(frozen=True)
class LabelCounts:
    """How many labels there are, and on which side they count (`label_counts`)."""

    total: int
    accept: int
    reject: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_ids(cache: Cache, ids: list[str]) -> list[str]:
    """`ids` deduplicated, each a content id of a cached image (else LabelsError naming it)."""
    unique = list(dict.fromkeys(ids))
    bad = [i for i in unique if not isinstance(i, str) or not schema.CONTENT_ID.match(i)]
    if bad:
        raise LabelsError(f"{str(bad[0])[:80]!r} is not a content id (64 lowercase hex digits)")
    if not unique:
        return unique
    missing = sorted(set(unique) - set(cached_among(cache, unique).to_pylist()))
    if missing:
        raise LabelsError(f"{missing[0]}: no cached image has this id in {cache.uri}")
    return unique


def set_labels(ids: list[str], label: str, db: str | os.PathLike | Cache | None = None, *,
               source: str = "gallery") -> int:
    """Label these cached images (content ids) with `label` (accept, reject or one of the 30
    names), replacing their earlier labels; returns how many were written."""
    cache = Cache.open(db)
    cache.check_writable()
    try:
        label = canonical_label(label)
    except ValueError as ex:
        raise LabelsError(str(ex).split("\n")[0]) from None
    ids = _check_ids(cache, ids)
    if not ids:
        return 0
    now = datetime.now(timezone.utc)
    data = pa.Table.from_pylist([{"id": i, "label": label, "source": source, "imported_at": now} for i in ids],
                                schema=schema.LABELS_SCHEMA)
    (cache.table(schema.LABELS).merge_insert("id")
     .when_matched_update_all().when_not_matched_insert_all().execute(data))
    _compact_now_and_then(cache)
    return len(ids)


def unset_labels(ids: list[str], db: str | os.PathLike | Cache | None = None) -> int:
    """Remove the labels of these content ids (unknown ids are refused); returns how many went."""
    cache = Cache.open(db)
    cache.check_writable()
    ids = _check_ids(cache, ids)
    if not ids:
        return 0
    where = sql_in("id", ids)
    before = cache.dataset(schema.LABELS).count_rows(where)
    if before:
        cache.table(schema.LABELS).delete(where)
        _compact_now_and_then(cache)
    return before


def _compact_now_and_then(cache: Cache) -> None:
    # Every label write commits a small fragment; reads over thousands of them slow down.
    ds = cache.dataset(schema.LABELS)
    if len(ds.get_fragments()) > LABEL_FRAGMENTS:
        try:
            ds.optimize.compact_files()
        except Exception:  # a concurrent write won the commit: the next write compacts instead
            pass


def labels_of(ids: list[str], db: str | os.PathLike | Cache | None = None) -> dict[str, str]:
    """{content id: label} for those of `ids` that have a label."""
    cache = Cache.open(db)
    ids = [i for i in dict.fromkeys(ids) if isinstance(i, str) and schema.CONTENT_ID.match(i)]
    if not ids:
        return {}
    rows = cache.read(schema.LABELS, ["id", "label"], sql_in("id", ids))
    return dict(zip(rows.column("id").to_pylist(), rows.column("label").to_pylist()))


def label_counts(db: str | os.PathLike | Cache | None = None) -> LabelCounts:
    """How many labels exist, and how many of them count as accept and as reject."""
    cache = Cache.open(db)
    labels = cache.read(schema.LABELS, ["label"]).column("label").to_pylist()
    accept = sum(label_is_accept(x) for x in labels)
    return LabelCounts(total=len(labels), accept=accept, reject=len(labels) - accept)


def cached_among(cache: Cache, ids: list[str]) -> pa.Array:
    """Those of `ids` that are cached images' ids, looked up by id (never the set of every cached
    id: at a million rows building that took longer than the evaluation it was for)."""
    if not ids or not cache.has_images():
        return pa.array([], pa.string())
    found = [cache.read(schema.IMAGES, ["id"], where).column("id") for where in id_filters(ids)]
    return pa.chunked_array(found, pa.string()).combine_chunks()


def labelled_ids(cache: Cache) -> pa.Table:
    """id, label, target (bool) of every label whose image is still cached."""
    labels = cache.read(schema.LABELS, ["id", "label"])
    present = cached_among(cache, labels.column("id").to_pylist())
    labels = labels.filter(pc.is_in(labels.column("id"), present))
    targets = pa.array([label_is_accept(x) for x in labels.column("label").to_pylist()], pa.bool_())
    return labels.append_column("target", targets)


def resolve_ref(ref: str, base: Path, paths: dict[str, str], ids: set[str]) -> tuple[str | None, str]:
    """(content id or None, reason) for an id, or a path absolute / relative to cwd or `base`
    (as the file system names it, or as the cache prints it: `faramir.store.schema.path_to_column`)."""
    if schema.CONTENT_ID.match(ref.lower()):
        return (ref.lower(), "") if ref.lower() in ids else (None, "no cached image has this id")
    ref = schema.path_from_column(ref)
    candidates = [Path(ref)] if os.path.isabs(ref) else [Path.cwd() / ref, base / ref]
    for candidate in candidates:
        full = schema.path_to_column(os.path.abspath(candidate))
        if full in paths and paths[full] in ids:
            return paths[full], ""
    for candidate in candidates:
        if candidate.is_file():
            digest = sha256_file(candidate)
            if digest in ids:
                return digest, ""
            return None, "not cached; run 'faramir ingest' on it first"
    return None, "no such cached path, and no such file"
