"""Opening the cache: its tables, meta record and schema version, and what a long-lived process keeps
per table version (`Cache.kept`).

Reads go through Lance datasets (`Cache.dataset`, `Cache.read`); writes through LanceDB tables
(`Cache.table`, `Cache.images`), whose connection is made on first use. A stage-two command that
only reads therefore never imports LanceDB: `import lance` costs about a third of `import
lancedb` (which loads its namespace clients), and Lance's scans are what the queries run anyway.

Any number of processes may open, create and write one cache at once: tables are created with
identical schemas (primary keys included), one process at a time (`creating`), and one that
another process created first is taken as it is; LanceDB retries conflicting commits of its own
operations, and the operations that Lance leaves to the caller retry through `retrying`.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from faramir.config import FaramirConfig
from faramir.store import schema
from faramir.store.errors import CacheError, CacheRecovered, GeneratedCache, NoCache, NotACache, read_only
from faramir.store.recovery import recover

T = TypeVar("T")
RETRIES = 8  # tries of an idempotent write whose commit conflicts with another process's
CREATE_LOCK = ".faramir-create.lock"  # in a local cache's folder: held while a table is made

TABLE_KEYS = {  # every table but images, with its primary key
    schema.META: "key", schema.FILES: "path", schema.FAILURES: "path", schema.HEADS: "name",
    schema.LABELS: "id", schema.LAYOUT: "id", schema.LAYOUT_MODEL: "fit",
}
KEPT = {  # what a Cache keeps per table version (`Cache.kept`): kind → how many entries at most
    "allow_list": 16,  # the rows a filter passes (up to 1 MB each at a million rows)
    "count": 64,  # how many rows a filter passes
    "head": 64,  # a heads table record
    "map": 4,  # the map's points and their rows in the images table (`faramir.store.map.points`)
}


def default_db() -> str:
    """`$FARAMIR_DB`, else `~/.local/share/faramir/cache.lancedb` (XDG data home)."""
    if os.environ.get("FARAMIR_DB"):
        return os.environ["FARAMIR_DB"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "faramir", "cache.lancedb")


def _is_uri(db: str) -> bool:
    return "://" in db






def is_conflict(ex: BaseException) -> bool:
    """Whether `ex` is a commit that lost to another process's concurrent commit (Lance's
    CommitConflictError, its "too many concurrent writers" once its own retries are used up,
    or LanceDB's wrapping of either), so that running it again may succeed."""
    text = str(ex).lower()
    return (type(ex).__name__ == "CommitConflictError" or "commit conflict" in text
            or "too many concurrent writers" in text)


def retrying(write: Callable[[], T], attempts: int = RETRIES) -> T:
    """`write()`, again after a growing random pause while its commit conflicts with another
    process's (for idempotent writes only: each try must read afresh what it writes from)."""
    for attempt in range(attempts):
        try:
            return write()
        except Exception as ex:
            if not is_conflict(ex) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.1) * 2 ** attempt)
    raise AssertionError("unreachable")


def ensure_primary_key(table, key: str) -> None:
    """Declare `key` the table's (unenforced) primary key, if it is not yet: without it, concurrent
    merge_insert calls inserting the same new key can both succeed and leave duplicate rows."""
    if b"lance-schema:unenforced-primary-key:position" in (table.schema.field(key).metadata or {}):
        return
    try:
        table.set_unenforced_primary_key(key)
    except Exception:
        pass  # a concurrent creator set it first


def _check_folder(uri: str) -> None:
    """Refuse, before anything is written, a location that is not a faramir cache nor a place
    to make one: a file, or a folder holding anything but a cache's tables (another LanceDB
    database, a folder of pictures). A folder that is empty, or being made a cache by another
    process, is fine."""
    path = Path(uri)
    if path.exists() and not path.is_dir():
        raise NotACache(f"{uri}: a file, not a cache; give --db a folder (a new one is made there), "
                        f"e.g. --db {uri}.lancedb")
    try:
        entries = set(os.listdir(path))
    except FileNotFoundError:
        return
    except OSError as ex:
        raise NotACache(f"{uri}: cannot be read as a cache ({ex.strerror}); give --db another folder") from None
    foreign = sorted(entries - {CREATE_LOCK, *(f"{name}.lance" for name in [*TABLE_KEYS, schema.IMAGES])})
    tables = sorted(e.removesuffix(".lance") for e in entries if e.endswith(".lance"))
    if foreign or (tables and f"{schema.META}.lance" not in entries):  # a cache's first table is its meta
        what = f"a LanceDB database with tables {', '.join(tables[:5])}" if tables else \
            f"{len(foreign)} entries ({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''})"
        raise NotACache(f"{uri}: not a faramir cache (it holds {what}); give --db a new or empty folder")


def check_writable(uri: str) -> None:
    """Raise ReadOnlyCache unless the cache at `uri` (or, where there is none yet, the folder it
    would be made in) and each of its tables' folders can be written by this process."""
    if _is_uri(uri):
        return
    path = Path(uri)
    while not path.exists() and path.parent != path:
        path = path.parent  # a new cache: the nearest folder that exists must take it
    folders = [path, *(p for t in path.glob("*.lance") for p in (t, *t.iterdir()) if p.is_dir())] \
        if path.is_dir() else [path]
    for folder in folders:
        if not os.access(folder, os.W_OK):
            why = "a read-only file system" if _read_only_mount(folder) else "no permission to write"
            raise read_only(uri, f"{folder}: {why}")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class Cache:
    """An open cache. `images` exists once the first ingest has fixed the embedding width."""

    def __init__(self, uri: str):
        self.uri = uri
        self.warnings: list[str] = []  # e.g. a table opened at an older version (`faramir.store.recovery`)
        self._conn = None
        self._datasets: dict[str, object] = {}  # table name → Lance dataset (see `dataset`)
        self._kept: dict[str, dict] = {kind: {} for kind in KEPT}  # see `kept`

    def __repr__(self) -> str:
        return f"Cache({self.uri!r})"

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, db: str | os.PathLike | Cache | None = None, *, create: bool = False,
             warn_generated: bool = True) -> Cache:
        """The cache at `db`: a folder or an object-store URI (None: `default_db()`); an open
        `Cache` passes through. With `create` a new cache (or a missing table) is made; without
        it, a location holding no cache raises NoCache saying how to make one, and a cache built
        from generated weights gives a `GeneratedCache` warning (unless not `warn_generated`:
        stage one, which says so of the weights themselves).

        A local table whose newest version a power cut left unreadable opens at its newest whole
        version (`faramir.store.recovery`): a `CacheRecovered` warning says so, also kept in `warnings`."""
        if isinstance(db, Cache):
            return db
        uri = os.fspath(db) if db is not None else default_db()
        cache = cls(uri)
        if not _is_uri(uri):
            _check_folder(uri)
            if not create and not Path(uri).is_dir():
                raise NoCache(f"{uri}: no cache here yet; run 'faramir ingest PATH --db {uri}' first")
            Path(uri).mkdir(parents=True, exist_ok=True)
            cache.warnings = recover(uri)
            for line in cache.warnings:
                warnings.warn(line, CacheRecovered, stacklevel=2)
        missing = [name for name in TABLE_KEYS if not cache.has_table(name)]
        if not create and schema.META in missing:
            raise NoCache(f"{uri}: no cache here yet; run 'faramir ingest PATH --db {uri}' first")
        for name in missing:
            cache._create(name, TABLE_KEYS[name])
        meta = cache.meta()
        cache._check_version(meta)
        if not create and warn_generated and meta.get("weights_generated"):
            warnings.warn(GeneratedCache(f"{uri} was built from GENERATED weights ({meta['weights_generated']}); "
                                         f"its scores mean nothing"), stacklevel=2)
        return cache

    @property
    def conn(self):
        """The LanceDB connection (made on first use: only writes need it)."""
        if self._conn is None:
            import lancedb

            self._conn = lancedb.connect(self.uri)
        return self._conn

    def table_names(self) -> list[str]:
        result = self.conn.list_tables()
        return list(getattr(result, "tables", result))

    def has_table(self, name: str) -> bool:
        if _is_uri(self.uri):
            return name in self.table_names()
        return os.path.isdir(os.path.join(self.uri, f"{name}.lance", "_versions"))

    def _create(self, name: str, key: str):
        table = self._create_table(name, _SCHEMAS[name])
        ensure_primary_key(table, key)
        if name == schema.META:
            self.set_meta(schema_version=str(schema.SCHEMA_VERSION), replace=False)
        return table

    @contextlib.contextmanager
    def creating(self):
        """Held while a table is made, so that processes creating one cache make each table once.

        Two processes creating a table at the same moment would both commit it: Lance retries the
        second create as an overwrite of the first's table, which fails the first's next write (or
        loses it, if it came in between). A local cache takes an exclusive lock on a file in its
        folder; an object store has no lock to take, so make a new cache there with one process
        (a Ray ingest does: only its driver creates tables)."""
        if _is_uri(self.uri):
            yield
            return
        import fcntl

        os.makedirs(self.uri, exist_ok=True)
        with open(os.path.join(self.uri, CREATE_LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def _create_table(self, name: str, table_schema: pa.Schema):
        """Table `name`, created with `table_schema` unless it exists (made by another process,
        its columns are checked against ours, score columns aside)."""
        with self.creating():
            if not self.has_table(name):
                try:
                    return self.conn.create_table(name, schema=table_schema, exist_ok=True)
                except Exception:  # an object store: another process may have made it meanwhile
                    if not self.has_table(name):
                        raise
        table = self.table(name)
        have = {f.name: f.type for f in table.schema}
        differ = [f.name for f in table_schema if not schema.is_score_column(f.name) and have.get(f.name) != f.type]
        if differ:
            raise CacheError(f"{self.uri}: its {name} table has other columns than this faramir makes "
                             f"({', '.join(differ)}); use another --db")
        return table

    def _check_version(self, meta: dict[str, str]) -> None:
        """Refuse a cache newer than this code; bring an older one up to date (`faramir.store.migrations`)."""
        version = int(meta.get("schema_version") or schema.SCHEMA_VERSION)
        if version > schema.SCHEMA_VERSION:
            raise CacheError(
                f"{self.uri}: cache schema version {version} is newer than this faramir supports "
                f"({schema.SCHEMA_VERSION}); upgrade faramir"
            )
        if version < schema.SCHEMA_VERSION:
            from faramir.store.migrations import migrate

            migrate(self, version)

    # -- tables (writes) and datasets (reads) ----------------------------------------------

    def table(self, name: str):
        """Table `name` as a LanceDB table, for writing."""
        return self.conn.open_table(name)

    def has_images(self) -> bool:
        return self.has_table(schema.IMAGES)

    def images(self):
        """The images table as a LanceDB table, for writing."""
        if not self.has_images():
            raise NoCache(f"{self.uri}: the cache holds no images yet; run 'faramir ingest PATH' first")
        return self.table(schema.IMAGES)

    def create_images(self, cfg: FaramirConfig, head_prefixes: list[str]):
        """The images table for embeddings of `cfg`'s width, with score columns per prefix (or
        the one another process created meanwhile)."""
        table = self._create_table(schema.IMAGES, schema.images_schema(cfg, head_prefixes))
        ensure_primary_key(table, "id")
        return table

    def dataset(self, name: str = schema.IMAGES):
        """Table `name` as a Lance dataset at its latest version, kept between calls.

        Queries read through this rather than LanceDB's table: its per-batch overhead is 10-20
        times the scan itself for the narrow columns they read, and opening a table costs
        milliseconds. Keeping one dataset keeps its index cache: a freshly opened one reloads the
        IVF and scalar indexes on every query, which at a million rows doubled the latency of a
        nearest-neighbour search. A newer version (an ingest or rescore committed meanwhile) is
        checked out with the same cache; looking for one costs about 50 µs on a local disk."""
        ds = self._datasets.get(name)
        if ds is None:
            if name == schema.IMAGES and not self.has_images():
                self.images()  # raises NoCache with the fix
            if _is_uri(self.uri):
                ds = self.table(name).to_lance()  # the connection's storage options
            else:
                import lance

                ds = lance.dataset(os.path.join(self.uri, f"{name}.lance"))
        else:
            latest = ds.latest_version
            if latest != ds.version:
                ds = ds.checkout_version(latest)
        self._datasets[name] = ds
        return ds

    def kept(self, kind: str, ds, key, make: Callable[[], T]) -> T:
        """`make()`, kept for one version of a table (`ds`, from `dataset`) and `key`; the newest
        `KEPT[kind]` of each kind stay. For what every query asks again and again of one table
        version: the rows a filter passes, how many there are, a head's record."""
        full = (ds.uri, ds.version, key)
        found = self._kept[kind].get(full)
        if found is None:
            found = make()
            kept = list(self._kept[kind].items())[1 - KEPT[kind]:]  # the newest; one step, for threads
            self._kept[kind] = {**dict(kept), full: found}
        return found

    def allow_list(self, ds, where: str):
        """The rows of `ds` (one version of a table, from `dataset`) passing the SQL filter `where`,
        a `faramir.store.vectors.allow_lists.AllowList` (a bitmap of row addresses, and Lance's
        `row_addr_allowlist` form).

        A filtered vector search given these skips the filter: LanceDB's prefilter rebuilds the
        same set from the scalar index on every query, about 12-14 ms at a million rows. Row
        addresses hold for one table version only (a compaction moves rows), so a new version
        builds a new list."""
        from faramir.store.vectors.allow_lists import AllowList

        return self.kept("allow_list", ds, where, lambda: AllowList.of(ds, where))

    def count_where(self, ds, where: str) -> int:
        """How many rows of `ds` (one version of a table, from `dataset`) pass the SQL filter
        `where` (a query that checks something of every row, as
        `faramir.store.heads.unscored.warn_unscored` does, pays for it once per version)."""
        return self.kept("count", ds, where, lambda: ds.count_rows(where))

    def check_writable(self) -> None:
        """Raise ReadOnlyCache before anything is computed when this process cannot write the
        cache: a read-only file system, or a folder it may not write (a local cache; an object
        store says so at the first write)."""
        check_writable(self.uri)

    def read(self, name: str, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        """Only `columns` (None: all) of the rows of table `name` matching `where` (SQL)."""
        return self.dataset(name).to_table(columns=columns, filter=where)

    def ids(self) -> set[str]:
        """Content ids of every cached image."""
        if not self.has_images():
            return set()
        return set(self.read(schema.IMAGES, ["id"]).column("id").to_pylist())

    # -- meta ------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        rows = self.read(schema.META).to_pylist()
        return {r["key"]: r["value"] for r in rows}

    def get_meta(self, key: str) -> str | None:
        return self.meta().get(key)

    def set_meta(self, replace: bool = True, **values: str) -> None:
        """Set these meta keys in one commit; with `replace` false, keys already set keep their
        value (the first of several processes claiming a new cache wins)."""
        data = pa.Table.from_pylist(
            [{"key": k, "value": v} for k, v in values.items()], schema=schema.META_SCHEMA
        )
        merge = self.table(schema.META).merge_insert("key")
        if replace:
            merge = merge.when_matched_update_all()
        merge.when_not_matched_insert_all().execute(data)

    def config(self) -> FaramirConfig | None:
        """The model configuration of the cached vectors; None before the first ingest."""
        text = self.get_meta("config")
        if text:
            return FaramirConfig.from_json(text)
        if self.has_images():
            raise CacheError(f"{self.uri}: the record of the model this cache was built with is missing "
                             f"(a power cut can lose the newest version of its meta table); run 'faramir "
                             f"ingest PATH --db {self.uri}' with the weights it was built with to restore it")
        return None


_SCHEMAS = {
    schema.META: schema.META_SCHEMA, schema.FILES: schema.FILES_SCHEMA, schema.FAILURES: schema.FAILURES_SCHEMA,
    schema.HEADS: schema.HEADS_SCHEMA, schema.LABELS: schema.LABELS_SCHEMA,
    schema.LAYOUT: schema.LAYOUT_SCHEMA, schema.LAYOUT_MODEL: schema.LAYOUT_MODEL_SCHEMA,
}
