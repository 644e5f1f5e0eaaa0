"""Opening the cache: the LanceDB connection, its tables, its meta record and schema version."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import lancedb
import pyarrow as pa

from faramir.config import FaramirConfig
from faramir.errors import FaramirError
from store import schema


class CacheError(FaramirError):
    """The cache cannot be opened or used as asked."""


class NoCache(CacheError):
    """There is no cache at the given location yet."""


def default_db() -> str:
    """`$FARAMIR_DB`, else `~/.local/share/faramir/cache.lancedb` (XDG data home)."""
    if os.environ.get("FARAMIR_DB"):
        return os.environ["FARAMIR_DB"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "faramir", "cache.lancedb")


def _is_uri(db: str) -> bool:
    return "://" in db


@dataclass
class Cache:
    """An open cache. `images` exists once the first ingest has fixed the embedding width."""

    uri: str
    conn: lancedb.DBConnection
    _datasets: dict = field(default_factory=dict, repr=False)  # table name → Lance dataset (see dataset)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, db: str | os.PathLike | None = None, create: bool = False) -> Cache:
        uri = os.fspath(db) if db is not None else default_db()
        if not _is_uri(uri):
            if not create and not Path(uri).is_dir():
                raise NoCache(f"{uri}: no cache here yet; run 'faramir ingest PATH --db {uri}' first")
            Path(uri).mkdir(parents=True, exist_ok=True)
        cache = cls(uri, lancedb.connect(uri))
        existing = set(cache.table_names())
        if not create and schema.META not in existing:
            raise NoCache(f"{uri}: no cache here yet; run 'faramir ingest PATH --db {uri}' first")
        for name, sch, key in (
            (schema.META, schema.META_SCHEMA, "key"),
            (schema.FILES, schema.FILES_SCHEMA, "path"),
            (schema.FAILURES, schema.FAILURES_SCHEMA, "path"),
            (schema.HEADS, schema.HEADS_SCHEMA, "name"),
            (schema.LABELS, schema.LABELS_SCHEMA, "id"),
        ):
            if name not in existing:
                cache._create(name, sch, key)
        cache._check_version()
        return cache

    def table_names(self) -> list[str]:
        result = self.conn.list_tables()
        names = getattr(result, "tables", result)
        return list(names)

    def _create(self, name: str, sch: pa.Schema, key: str):
        table = self.conn.create_table(name, schema=sch, exist_ok=True)
        try:  # concurrent merge_insert of the same new key must not leave duplicates
            table.set_unenforced_primary_key(key)
        except Exception:
            pass  # already set (a concurrent creator won the race)
        if name == schema.META:
            self.set_meta(schema_version=str(schema.SCHEMA_VERSION))
        return table

    def _check_version(self) -> None:
        version = int(self.get_meta("schema_version") or schema.SCHEMA_VERSION)
        if version > schema.SCHEMA_VERSION:
            raise CacheError(
                f"{self.uri}: cache schema version {version} is newer than this faramir supports "
                f"({schema.SCHEMA_VERSION}); upgrade faramir"
            )
        # Version 1 is the first; later versions add their migrations here, oldest first.

    def table(self, name: str):
        return self.conn.open_table(name)

    # -- meta ------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        rows = self.table(schema.META).to_arrow().to_pylist()
        return {r["key"]: r["value"] for r in rows}

    def get_meta(self, key: str) -> str | None:
        return self.meta().get(key)

    def set_meta(self, **values: str) -> None:
        data = pa.Table.from_pylist(
            [{"key": k, "value": v} for k, v in values.items()], schema=schema.META_SCHEMA
        )
        (self.table(schema.META).merge_insert("key")
         .when_matched_update_all().when_not_matched_insert_all().execute(data))

    # -- images ------------------------------------------------------------------------------

    def has_images(self) -> bool:
        return schema.IMAGES in self.table_names()

    def images(self):
        if not self.has_images():
            raise NoCache(f"{self.uri}: the cache holds no images yet; run 'faramir ingest PATH' first")
        return self.table(schema.IMAGES)

    def dataset(self, name: str = schema.IMAGES):
        """Table `name` as a Lance dataset at its latest version, kept between calls.

        Stage-two queries read through this rather than LanceDB's table: its per-batch overhead
        is 10-20 times the scan itself for the narrow columns they read, and opening a table
        costs milliseconds. Keeping one dataset keeps its index cache: a freshly opened one
        reloads the IVF and scalar indexes on every query, which at a million rows doubled the
        latency of a nearest-neighbour search. A newer version (an ingest or rescore committed
        meanwhile) is checked out with the same cache; looking for one costs about 50 µs on a
        local disk."""
        ds = self._datasets.get(name)
        if ds is None:
            ds = (self.images() if name == schema.IMAGES else self.table(name)).to_lance()
        else:
            latest = ds.latest_version
            if latest != ds.version:
                ds = ds.checkout_version(latest)
        self._datasets[name] = ds
        return ds

    def config(self) -> FaramirConfig | None:
        text = self.get_meta("config")
        return FaramirConfig.from_json(text) if text else None

    def heads(self) -> list[dict]:
        """Registered heads (without checkpoint bytes), oldest first."""
        rows = read_columns(self.table(schema.HEADS), HEAD_COLUMNS).to_pylist()
        return sorted(rows, key=lambda r: r["created_at"])

    def head(self, name: str) -> dict:
        """The record of head `name` (without checkpoint bytes): every query resolves its head
        through this, so it reads one row's small columns, not the table."""
        rows = self.dataset(schema.HEADS).to_table(
            columns=HEAD_COLUMNS, filter=f"name = {sql_str(name)}").to_pylist()
        if rows:
            return rows[0]
        known = ", ".join(h["name"] for h in self.heads()) or "none"
        raise CacheError(f"no head named {name!r} in {self.uri} (known: {known}); "
                         f"score one with 'faramir rescore --head FILE --name {name}'")


HEAD_COLUMNS = [f.name for f in schema.HEADS_SCHEMA if f.name != "checkpoint"]


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def json_dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def read_columns(table, columns: list[str], where: str | None = None) -> pa.Table:
    """Only `columns` of the rows matching `where` (SQL), read column-wise: no embeddings unless asked."""
    query = table.search()
    if where:
        query = query.where(where)
    return query.select(columns).limit(None).to_arrow()


def cached_ids(cache: Cache) -> set[str]:
    """Content ids of every cached image."""
    if not cache.has_images():
        return set()
    return set(read_columns(cache.images(), ["id"]).column("id").to_pylist())
