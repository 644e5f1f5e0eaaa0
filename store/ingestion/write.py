"""Writing an ingest's results: the cache claimed for a model, then chunks committed in order by a
background thread while the model computes the next ones.

Each chunk is a few LanceDB commits, each atomic, in this order: ``images`` rows (`merge_insert`
on the id: a rerun can never duplicate one), new paths of known content, then ``failures`` rows
removed for files that now read fine, then ``files`` rows, then new ``failures`` rows. A SIGKILL
between two commits leaves rows whose ``files`` entry is missing; the rerun reads those files
again, finds their content cached, and only adds the ``files`` rows.

Other processes may write the cache meanwhile. A row another ingest inserted first is not
inserted again (and not counted as new: `Writer.lost_inserts`); its paths are appended to that
row instead, each append a read-modify-write that Lance commits only if no other commit changed
the row since the read (else it is read again), so two runs never drop each other's paths. The
images table's columns are checked before every chunk: a head that a rescore added scores the
chunk's rows from then on, and a head that was removed or replaced is no longer written.
"""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from faramir.config import DECODE_MODES, decoded_fingerprint
from faramir.locations import FARAMIR_FILE
from faramir.store import schema
from faramir.store.cache import RETRIES, Cache, ensure_primary_key, is_conflict, retrying
from faramir.store.errors import ExpertsMismatch
from faramir.store.heads import registry
from faramir.store.schema import HeadColumns
from faramir.store.sql import sql_in

if TYPE_CHECKING:
    from faramir.store.heads.scoring import HeadScorer

EMBEDDING_FIELDS = (  # ExpertOutputs attribute = images column
    "faramir_embedding", "siglip_embedding", "aesthetic_features", "aesthetic_score",
    "quality_features",
)
SCHEMA_ATTEMPTS = 5  # tries of a chunk's insert while rescores and heads rm change the score columns
FACT_COLUMNS = ("id", "paths", "size", "mtime_ns", "width", "height", "format", "mode",
                "experts_fingerprint", "precision")


def prepare(cache: Cache, model, decode: str = "faithful") -> tuple[pa.Schema, dict[str, Scorer]]:
    """Check the cache was built with these experts from inputs of this `decode` (or claim an empty
    one: the first of several processes claiming it at once wins, the others are checked against
    it), make sure the images table exists, and return its schema and the heads that score new
    rows (`scorers_for`)."""
    from faramir.checkpoints import head_to_bytes

    info = model.info
    fingerprint = decoded_fingerprint(info.experts_fingerprint, decode)
    if not cache.get_meta("experts_fingerprint"):
        _check_experts(cache, info, _rows_fingerprint(cache), decode)  # a claim a power cut lost: the rows say
        cache.set_meta(replace=False, config=info.config.to_json(), experts_fingerprint=fingerprint,
                       pool_fingerprint=info.pool_fingerprint, weights_generated=info.generated or "")
    if _check_experts(cache, info, cache.get_meta("experts_fingerprint"), decode):
        cache.set_meta(experts_fingerprint=fingerprint)  # recorded the old way: relabelled
    if not cache.has_images():
        registered = registry.heads(cache)
        if not any(h["name"] == schema.DEFAULT_HEAD for h in registered):
            prefix = schema.new_prefix(schema.DEFAULT_HEAD, {h["prefix"] for h in registered})
            registry.register(
                cache, name=schema.DEFAULT_HEAD, columns=HeadColumns(prefix, prefix),
                fingerprint=info.head_fingerprint, pool_fingerprint=info.pool_fingerprint,
                source=str(Path(info.weights_dir) / FARAMIR_FILE),
                checkpoint=head_to_bytes({k: v.detach().cpu() for k, v in model.head.state_dict().items()}),
                replace=False)
        cache.create_images(info.config, [h["prefix"] for h in registry.heads(cache)])
    images = cache.images()
    ensure_primary_key(images, "id")
    return images.schema, scorers_for(cache, images.schema, {})


def _check_experts(cache: Cache, info, built_with: str | None, decode: str) -> bool:
    """Raise ExpertsMismatch unless the cache's vectors (`built_with`, None: none yet) are these
    experts' from inputs of this `decode`; True when they are, but recorded the old way
    (`file_bytes_experts_fingerprint`)."""
    if not built_with or built_with == decoded_fingerprint(info.experts_fingerprint, decode):
        return False
    other = [d for d in DECODE_MODES if d != decode and built_with == decoded_fingerprint(info.experts_fingerprint, d)]
    if other:
        raise ExpertsMismatch(
            f"{cache.uri} was built with --decode {other[0]}, whose vectors cannot be mixed with --decode "
            f"{decode} ones; ingest with --decode {other[0]}, or into another cache with --db DIR")
    from faramir.errors import FaramirError
    from faramir.weights import file_bytes_experts_fingerprint

    try:
        if decode == "faithful" and built_with == file_bytes_experts_fingerprint(info.weights_dir):
            return True
    except (OSError, FaramirError):
        pass
    raise ExpertsMismatch(
        f"{cache.uri} was built with other expert weights or preprocessing (experts "
        f"fingerprint {built_with[:12]}, these weights {info.experts_fingerprint[:12]}); "
        f"its vectors cannot be mixed with new ones. Ingest into another cache with "
        f"--db DIR, or use the weights it was built with"
    )


@dataclass
class Scorer:
    """A registered head scoring new rows: where its columns are, and the head."""

    columns: HeadColumns
    head: HeadScorer


def scorers_for(cache: Cache, images_schema: pa.Schema, have: dict[str, Scorer]) -> dict[str, Scorer]:
    """A scorer (by its prefix) for every registered head whose columns `images_schema` holds;
    those in `have` are reused. A head's columns are committed all at once; one scored before
    schema version 2 has no P_free column, and its new rows get none (`images_table` writes the
    columns there are)."""
    from faramir.checkpoints import head_from_bytes
    from faramir.store.heads.scoring import HeadScorer

    names = set(images_schema.names)
    scorers = {}
    for record in registry.heads(cache):
        cols = HeadColumns.of(record)
        if {cols.confidence, cols.logits} <= names:
            known = have.get(cols.prefix)
            scorers[cols.prefix] = known if known is not None and known.columns == cols else Scorer(
                cols, HeadScorer(head_from_bytes(registry.checkpoint(cache, record["name"]), cache.config()), 1))
    return scorers


def image_row(it, fingerprint: str, precision: str) -> dict:
    """The file facts (`FACT_COLUMNS`) of the new ``images`` row of a decoded `Item`."""
    return {
        "id": it.sha256, "paths": [it.source.display], "size": it.size, "mtime_ns": it.mtime_ns,
        "width": it.facts.width, "height": it.facts.height, "format": it.facts.format,
        "mode": it.facts.mode, "experts_fingerprint": fingerprint, "precision": precision,
    }


def images_table(images_schema: pa.Schema, scorers: dict[str, Scorer], rows: list[dict],
                 arrays: dict[str, list[np.ndarray]], now: datetime) -> pa.Table:
    """New images as rows of the images table: `image_row`s, the experts' outputs (per
    `EMBEDDING_FIELDS` name, a list of per-batch arrays), and every registered head's scores."""
    from faramir.store.heads.scoring import fixed_size_list

    n = len(rows)
    arrays = {k: np.concatenate(v) for k, v in arrays.items()}
    cols: dict[str, pa.Array] = {
        name: pa.array([r[name] for r in rows], images_schema.field(name).type) for name in FACT_COLUMNS
    }
    cols["ingested_at"] = pa.array([now] * n, schema.TIMESTAMP)
    cols["aesthetic_score"] = pa.array(arrays["aesthetic_score"], pa.float32())
    for name in ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features"):
        cols[name] = fixed_size_list(arrays[name])
    for scorer in scorers.values():  # heads reading one head's v and f write the same values there
        cols.update(scorer.head.score_columns(scorer.columns, arrays["faramir_embedding"], arrays["aesthetic_features"],
                                         arrays["quality_features"]))
    return pa.Table.from_arrays(
        [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in images_schema], schema=images_schema,
    )


def _rows_fingerprint(cache: Cache) -> str | None:
    """The experts fingerprint of the cached rows: what claims the cache when its meta table lost
    the claim (a power cut can lose its newest version while later commits survive)."""
    if not cache.has_images():
        return None
    rows = cache.dataset(schema.IMAGES).to_table(columns=["experts_fingerprint"], limit=1)
    return rows.column(0)[0].as_py() if len(rows) else None


def insert_new(images, rows: pa.Table) -> int:
    """Insert the rows whose id the images table (a Lance dataset) lacks; how many were inserted.

    Through Lance, not LanceDB, whose check of vector columns refuses a null list: a row gets
    null scores under a head whose columns a rescore has added but not yet registered (or a
    killed rescore left behind), and those nulls are what `faramir.store.heads.unscored` fills.

    The merge is not planned on the id index: Lance 13 checks a merge planned on a scalar index
    against the version it read, not against rows another writer committed since, so two ingests
    committing the same new content both inserted it (tests/chaos/run.py found it; without the index,
    the primary-key check sees the conflict and retries). The price is a scan of the id column
    per commit, and a commit holds up to 1,024 files."""
    result = images.merge_insert("id").use_index(False).when_not_matched_insert_all().execute(rows)
    return result["num_inserted_rows"]


@dataclass
class Chunk:
    """Everything one commit writes, built in the model thread, written by the writer thread."""

    rows: list[dict] = field(default_factory=list)  # new images: file facts
    arrays: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in EMBEDDING_FIELDS})
    row_of: dict[str, int] = field(default_factory=dict)  # id → index in rows
    path_appends: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # id → [(path, mtime)]
    files: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    cleared_failures: list[str] = field(default_factory=list)  # paths that read fine now
    dropped_files: list[str] = field(default_factory=list)  # paths that fail now
    n: int = 0  # files this chunk accounts for

    def add_path(self, content_id: str, path: str, mtime_ns: int) -> None:
        if content_id in self.row_of:
            self.rows[self.row_of[content_id]]["paths"].append(path)
        else:
            self.path_appends.setdefault(content_id, []).append((path, mtime_ns))


class Writer(threading.Thread):
    """Commits chunks in order while the model computes the next ones. A bounded queue keeps
    memory flat: when writing falls behind, the model thread waits."""

    def __init__(self, cache: Cache, images_schema: pa.Schema, scorers: dict[str, Scorer]):
        super().__init__(name="faramir-ingest-writer", daemon=True)
        self.cache = cache
        self.images_schema = images_schema
        self.scorers = scorers
        self.queue: queue.Queue[Chunk | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.already_listed = 0  # path records that images.paths already held (a resumed run, another process)
        self.lost_inserts = 0  # new rows another process inserted first: not new in this run
        self.touched: set[str] = set()

    def put(self, chunk: Chunk) -> None:
        self.check()
        if not self.is_alive():
            if sys.is_finalizing():  # an ingest left unfinished, closed at exit: no thread can start now
                return  # the chunk is lost, as in a kill; a rerun computes it again
            self.start()  # late, so decode workers fork before this thread exists
        self.queue.put(chunk)

    def close(self) -> None:
        if self.is_alive():
            self.queue.put(None)
            self.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.commit(chunk)
                except BaseException as ex:  # handed to the model thread at its next put/close
                    self.error = ex

    def commit(self, chunk: Chunk) -> None:
        now = datetime.now(timezone.utc)
        self.commit_images(chunk, now)
        self.commit_records(chunk, now)

    def commit_images(self, chunk: Chunk, now: datetime) -> None:
        """The chunk's new ``images`` rows, one atomic commit (a Ray ingest appends fragments)."""
        if chunk.rows:
            inserted = self.insert(chunk, now)
            self.touched.add(schema.IMAGES)
            if inserted < len(chunk.rows):
                # Another process inserted some of these ids first (its rows have its own
                # ingested_at): add our paths to its rows.
                ours = self.cache.images().to_lance().to_table(
                    columns=["id", "ingested_at"], filter=sql_in("id", chunk.row_of))
                theirs = {i for i, t in zip(ours["id"].to_pylist(), ours["ingested_at"].to_pylist()) if t != now}
                self.lost(chunk.rows, theirs)

    def lost(self, rows: list[dict], theirs: set[str]) -> None:
        """`rows` whose ids in `theirs` another process inserted first: not new here, and their
        paths go onto that process's rows."""
        self.lost_inserts += len(theirs)
        self.append_paths({r["id"]: [(p, r["mtime_ns"]) for p in r["paths"]] for r in rows if r["id"] in theirs})

    def insert(self, chunk: Chunk, now: datetime) -> int:
        """Insert the chunk's new rows (ids already cached are left alone); returns how many were
        inserted. Scored with the heads the table has columns for now, checked before each try:
        a concurrent rescore or heads rm may add or drop score columns at any moment."""
        for attempt in range(SCHEMA_ATTEMPTS):
            images = self.cache.images()
            if images.schema.names != self.images_schema.names or self._unregistered(images.schema):
                self.images_schema = images.schema  # (a head registered since gets its scorer)
                self.scorers = scorers_for(self.cache, images.schema, self.scorers)
            rows = images_table(self.images_schema, self.scorers, chunk.rows, chunk.arrays, now)
            try:
                return retrying(lambda: insert_new(images.to_lance(), rows))
            except Exception:  # "field ... not found": the columns changed between the check and the commit
                if attempt == SCHEMA_ATTEMPTS - 1 or self.cache.images().schema.names == self.images_schema.names:
                    raise
        raise AssertionError("unreachable")

    def _unregistered(self, images_schema: pa.Schema) -> bool:
        """Whether `images_schema` holds score columns this writer has no head for (a rescore
        between adding its columns and registering its head, or one killed in between)."""
        return any(name.endswith("_confidence") and schema.is_score_column(name)
                   and name[:-len("_confidence")] not in self.scorers for name in images_schema.names)

    def commit_records(self, chunk: Chunk, now: datetime) -> None:
        """After the images: new paths of cached content, failures cleared, ``files`` rows, new
        failures, and the files rows of paths that fail now; each one commit."""
        if chunk.path_appends:
            self.append_paths(chunk.path_appends)
        if chunk.cleared_failures:
            self.delete_paths(schema.FAILURES, chunk.cleared_failures)
        if chunk.files:
            for row in chunk.files:
                row["seen_at"] = now
            self.upsert(schema.FILES, "path", pa.Table.from_pylist(chunk.files, schema=schema.FILES_SCHEMA))
        if chunk.failures:
            self.upsert(schema.FAILURES, "path", pa.Table.from_pylist(chunk.failures, schema=schema.FAILURES_SCHEMA))
        if chunk.dropped_files:
            self.delete_paths(schema.FILES, chunk.dropped_files)

    def upsert(self, name: str, key: str, rows: pa.Table) -> None:
        retrying(lambda: self.cache.table(name).merge_insert(key).when_matched_update_all()
                 .when_not_matched_insert_all().execute(rows))
        self.touched.add(name)

    def delete_paths(self, name: str, paths: list[str]) -> None:
        retrying(lambda: self.cache.table(name).delete(sql_in("path", paths)))
        self.touched.add(name)

    def append_paths(self, appends: dict[str, list[tuple[str, int]]]) -> None:
        """Add paths to the `paths` of rows already committed: read the rows, then merge (id,
        paths, mtime_ns) into the version read, which Lance refuses if a concurrent commit changed
        those rows meanwhile (another run appending to the same row); then read and merge again."""
        sch = pa.schema([self.images_schema.field(n) for n in ("id", "paths", "mtime_ns")])
        for attempt in range(RETRIES):
            dataset = self.cache.images().to_lance()  # the latest version
            current = dataset.to_table(columns=["id", "paths"], filter=sql_in("id", appends))
            have = dict(zip(current["id"].to_pylist(), current["paths"].to_pylist()))
            updates, listed = [], 0
            for content_id, records in appends.items():
                if content_id not in have:
                    continue  # cannot happen: paths are appended only to ids committed before
                paths = list(have[content_id] or [])
                mtime = None
                for path, mtime_ns in records:
                    if path in paths:
                        listed += 1
                    else:
                        paths.append(path)
                        mtime = mtime_ns
                if mtime is not None:
                    updates.append({"id": content_id, "paths": paths, "mtime_ns": mtime})
            try:
                if updates:
                    (dataset.merge_insert("id").when_matched_update_all().conflict_retries(0)
                     .execute(pa.Table.from_pylist(updates, schema=sch)))
                    self.touched.add(schema.IMAGES)
                self.already_listed += listed
                return
            except Exception as ex:
                if not is_conflict(ex) or attempt == RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.1) * 2 ** attempt)
