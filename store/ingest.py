"""Stage one: run the experts once per image and keep what stage two needs in the cache.

`ingest(paths, ...)` is a generator of progress events (`IngestPlan`, then an `IngestProgress`
per batch, then one `IngestSummary`); the CLI draws them, the library never prints.

How a run goes:

1. Plan (no image bytes read): discover the files, `stat()` each, and compare with the ``files``
   table. A path whose size and mtime are unchanged, and whose content is still cached, is
   skipped. So is a recorded failure whose size and mtime are unchanged (unless `retry_failed`).
   When nothing is left to read the model is never even loaded.
2. Read: worker processes read, hash (sha256) and preprocess the rest. A worker is given the
   cached content ids, so a renamed or copied file is recognised by content and not decoded.
3. Compute: the model process runs the experts on each batch of new content only; content seen
   twice in one run is computed once. On CUDA the batch arrives in pinned memory and the next
   batch is launched before the previous one's results are copied back.
4. Write: a background thread turns results into Arrow rows (scored with every registered head,
   so the released head `faramir-v1` ranks a collection right after ingest) and commits them.

Crash safety. Results are committed in chunks of `commit_every` files or `commit_seconds`,
whichever comes first. Each chunk is a few LanceDB commits, each atomic, in this order:
``images`` rows (`merge_insert` on the id: a rerun can never duplicate one), new paths of known
content, then ``failures`` rows removed for files that now read fine, then ``files`` rows, then
new ``failures`` rows. A SIGKILL between two commits leaves rows whose ``files`` entry is
missing; the rerun reads those files again, finds their content cached, and only adds the
``files`` rows. At the end of a run the touched tables are compacted once they hold
`COMPACT_AT` small fragments; versions younger than `KEEP_VERSIONS` are kept (a power cut can
leave a broken latest manifest, and an older version is the way back).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from faramir.pipeline import InputError, Item, Source, discover, iter_batches, resolve_device
from store import schema
from store.db import Cache, CacheError, cached_ids, read_columns, sql_str
from store.index import ensure_indexes
from store.scoring import score_columns

COMMIT_ROWS = 1024  # files per commit: ~10 MB of rows at full size, ~1,000 fragments per 1M images
COMMIT_SECONDS = 60.0  # ...or this much compute, so a crash on a slow CPU loses at most a minute
COMPACT_AT = 8  # compact a table at the end of a run once it holds this many small fragments
KEEP_VERSIONS = timedelta(days=1)  # older table versions are removed by the end-of-run compaction

EMBEDDING_FIELDS = (  # ExpertOutputs attribute = images column
    "faramir_embedding", "siglip_embedding", "aesthetic_features", "aesthetic_score",
    "quality_features",
)


class ExpertsMismatch(CacheError):
    """The cache was built with other expert weights or preprocessing than the model given."""


# -- events ----------------------------------------------------------------------------------


@dataclass
class IngestPlan:
    """First event: what the stat pass found, before any image is read."""

    db: str
    found: int  # image files named or discovered
    to_read: int  # files that will be read (new, changed, or never seen at this path)
    unchanged: int  # same path, size and mtime as cached: not read
    skipped_failures: int  # recorded failures with unchanged size and mtime: not retried


@dataclass
class IngestProgress:
    """After each batch: cumulative counts over the files read so far."""

    total: int  # = IngestPlan.to_read
    done: int  # files read so far
    new: int  # images computed and queued for the cache
    known: int  # content already cached or computed earlier in this run (no model run)
    failed: int  # unreadable files read so far
    elapsed_s: float  # since the first file was read
    warnings: list[str] = field(default_factory=list)  # new warnings, e.g. a bad colour profile

    @property
    def files_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class FailedFile:
    path: str
    reason: str
    failed_at: datetime
    recorded_earlier: bool = False  # unchanged since an earlier run's failure: not retried


@dataclass
class IngestSummary:
    """Last event. found = new + unchanged + duplicate + failed."""

    db: str
    found: int
    new: int  # new images: the experts ran on them
    unchanged: int  # already cached at this path (most not even read)
    duplicate: int  # content already cached, or seen earlier in this run, at another path
    failed: int  # unreadable, this run or recorded earlier (see `failures`)
    failures: list[FailedFile]
    elapsed_s: float  # whole run, compaction included
    compute_s: float  # from the first file read (model loaded) to the last commit
    compacted: list[str]  # tables compacted at the end
    indexed: list[str] = field(default_factory=list)  # columns whose indexes were built or updated

    @property
    def images_per_s(self) -> float:
        return self.new / self.compute_s if self.compute_s > 0 else 0.0


IngestEvent = IngestPlan | IngestProgress | IngestSummary


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class _Entry:
    """What the stat pass knew about one file to read."""

    size: int | None
    mtime_ns: int | None
    prev_id: str | None  # content id of the files row for this path, if any
    was_failure: bool  # a failures row exists for this path


@dataclass
class _Plan:
    found: int
    to_read: list[Source]
    entries: list[_Entry]  # parallel to to_read
    unchanged: int
    skipped: list[FailedFile]


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None  # the worker's open() reports why
    return st.st_size, st.st_mtime_ns


def _plan(cache: Cache, sources: Sequence[Source], known: set[str], retry_failed: bool) -> _Plan:
    paths, seen = [], set()
    for src in sources:  # the cache keys on absolute paths; a path given twice counts once
        path = os.path.abspath(src.path)
        if path not in seen:
            seen.add(path)
            paths.append(path)
    stats = [_stat(p) for p in paths]

    files = read_columns(cache.table(schema.FILES), ["path", "id", "size", "mtime_ns"])
    pos = pc.index_in(pa.array(paths, pa.string()), value_set=files["path"].combine_chunks())
    prev_ids = files["id"].take(pos).to_pylist()
    prev_sizes = files["size"].take(pos).to_pylist()
    prev_mtimes = files["mtime_ns"].take(pos).to_pylist()
    failed_rows = {
        r["path"]: r for r in cache.table(schema.FAILURES).to_arrow().to_pylist()
    }  # usually a handful

    plan = _Plan(len(paths), [], [], 0, [])
    for i, path in enumerate(paths):
        size, mtime = stats[i]
        failure = failed_rows.get(path)
        if failure is not None and not retry_failed and (failure["size"], failure["mtime_ns"]) == (size, mtime):
            plan.skipped.append(FailedFile(path, failure["reason"], failure["failed_at"], recorded_earlier=True))
            continue
        if (size is not None and prev_ids[i] in known
                and (prev_sizes[i], prev_mtimes[i]) == (size, mtime) and failure is None):
            plan.unchanged += 1
            continue
        plan.to_read.append(Source(path, path))
        plan.entries.append(_Entry(size, mtime, prev_ids[i], failure is not None))
    return plan


# -- preparing the cache for a model -----------------------------------------------------------


@dataclass
class _Scorer:
    prefix: str
    head: torch.nn.Module  # FaramirHead on the CPU, from the checkpoint stored in ``heads``


def _prepare(cache: Cache, model) -> tuple[pa.Schema, list[_Scorer]]:
    """Check the cache was built with these experts (or claim an empty one), make sure the
    images table exists, and return its schema and the heads that score new rows."""
    from faramir.weights import FARAMIR_FILE, head_from_bytes, head_to_bytes

    info = model.info
    cfg = info.config
    built_with = cache.get_meta("experts_fingerprint")
    if built_with and built_with != info.experts_fingerprint:
        raise ExpertsMismatch(
            f"{cache.uri} was built with other expert weights or preprocessing (experts "
            f"fingerprint {built_with[:12]}, these weights {info.experts_fingerprint[:12]}); "
            f"its vectors cannot be mixed with new ones. Ingest into another cache with "
            f"--db DIR, or use the weights it was built with"
        )
    if not built_with:
        cache.set_meta(
            config=cfg.to_json(),
            experts_fingerprint=info.experts_fingerprint,
            pool_fingerprint=info.pool_fingerprint,
            weights_generated=info.generated or "",
        )

    heads_table = cache.table(schema.HEADS)
    if not cache.has_images():
        registered = cache.heads()
        if not any(h["name"] == schema.DEFAULT_HEAD for h in registered):
            state = {k: v.detach().cpu() for k, v in model.head.state_dict().items()}
            row = {
                "name": schema.DEFAULT_HEAD,
                "prefix": schema.new_prefix(schema.DEFAULT_HEAD, {h["prefix"] for h in registered}),
                "fingerprint": info.head_fingerprint,
                "pool_fingerprint": info.pool_fingerprint,
                "source": str(Path(info.weights_dir) / FARAMIR_FILE),
                "created_at": datetime.now(timezone.utc),
                "checkpoint": head_to_bytes(state),
            }
            (heads_table.merge_insert("name").when_not_matched_insert_all()
             .execute(pa.Table.from_pylist([row], schema=schema.HEADS_SCHEMA)))
        prefixes = [h["prefix"] for h in cache.heads()]
        cache.conn.create_table(
            schema.IMAGES, schema=schema.images_schema(cfg, prefixes), exist_ok=True
        )
    images = cache.images()
    if b"lance-schema:unenforced-primary-key:position" not in (images.schema.field("id").metadata or {}):
        try:  # concurrent merge_insert of the same new id must not leave duplicate rows
            images.set_unenforced_primary_key("id")
        except Exception:
            pass  # a concurrent first ingest set it
    images_schema = images.schema

    scorers = []
    names = set(images_schema.names)
    for row in heads_table.to_arrow().to_pylist():
        if all(f.name in names for f in schema.score_fields(row["prefix"])):
            scorers.append(_Scorer(row["prefix"], head_from_bytes(row["checkpoint"], cfg)))
    return images_schema, scorers


# -- chunks and the writer ---------------------------------------------------------------------


@dataclass
class _Chunk:
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


def _sql_list(values) -> str:
    return ", ".join(sql_str(v) for v in values)


def _fixed(values: np.ndarray, dim: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values, np.float32).reshape(-1)), dim)


class _Writer(threading.Thread):
    """Commits chunks in order while the model computes the next ones. A bounded queue keeps
    memory flat: when writing falls behind, the model thread waits."""

    def __init__(self, cache: Cache, images_schema: pa.Schema | None, scorers: list[_Scorer]):
        super().__init__(name="faramir-ingest-writer", daemon=True)
        self.cache = cache
        self.images_schema = images_schema
        self.scorers = scorers
        self.queue: queue.Queue[_Chunk | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.committed = 0  # new images committed
        self.already_listed = 0  # path records that images.paths already held (a resumed run)
        self.touched: set[str] = set()

    def put(self, chunk: _Chunk) -> None:
        self.check()
        if not self.is_alive():
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

    def commit(self, chunk: _Chunk) -> None:
        now = datetime.now(timezone.utc)
        if chunk.rows:
            images = self.cache.images()
            result = (images.merge_insert("id").when_not_matched_insert_all()
                      .execute(self.images_table(chunk, now)))
            self.committed += len(chunk.rows)
            self.touched.add(schema.IMAGES)
            if result.num_inserted_rows < len(chunk.rows):
                # Another process inserted some of these ids first: add our paths to its rows.
                self.append_paths({r["id"]: [(p, r["mtime_ns"]) for p in r["paths"]] for r in chunk.rows},
                                  count=False)
        if chunk.path_appends:
            self.append_paths(chunk.path_appends)
        if chunk.cleared_failures:
            self.cache.table(schema.FAILURES).delete(f"path IN ({_sql_list(chunk.cleared_failures)})")
            self.touched.add(schema.FAILURES)
        if chunk.files:
            for row in chunk.files:
                row["seen_at"] = now
            (self.cache.table(schema.FILES).merge_insert("path")
             .when_matched_update_all().when_not_matched_insert_all()
             .execute(pa.Table.from_pylist(chunk.files, schema=schema.FILES_SCHEMA)))
            self.touched.add(schema.FILES)
        if chunk.failures:
            (self.cache.table(schema.FAILURES).merge_insert("path")
             .when_matched_update_all().when_not_matched_insert_all()
             .execute(pa.Table.from_pylist(chunk.failures, schema=schema.FAILURES_SCHEMA)))
            self.touched.add(schema.FAILURES)
        if chunk.dropped_files:
            self.cache.table(schema.FILES).delete(f"path IN ({_sql_list(chunk.dropped_files)})")
            self.touched.add(schema.FILES)

    def images_table(self, chunk: _Chunk, now: datetime) -> pa.Table:
        n = len(chunk.rows)
        arrays = {k: np.concatenate(v) for k, v in chunk.arrays.items()}
        cols: dict[str, pa.Array] = {
            name: pa.array([r[name] for r in chunk.rows], self.images_schema.field(name).type)
            for name in ("id", "paths", "size", "mtime_ns", "width", "height", "format", "mode",
                         "experts_fingerprint", "precision")
        }
        cols["ingested_at"] = pa.array([now] * n, schema.TIMESTAMP)
        cols["aesthetic_score"] = pa.array(arrays["aesthetic_score"], pa.float32())
        for name in ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features"):
            cols[name] = _fixed(arrays[name], arrays[name].shape[1])
        for scorer in self.scorers:
            cols.update(score_columns(
                scorer.prefix, scorer.head, arrays["faramir_embedding"],
                arrays["aesthetic_features"], arrays["quality_features"],
            ))
        return pa.Table.from_arrays(
            [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in self.images_schema],
            schema=self.images_schema,
        )

    def append_paths(self, appends: dict[str, list[tuple[str, int]]], count: bool = True) -> None:
        """Add paths to the `paths` of rows already committed (a merge of id, paths, mtime_ns)."""
        images = self.cache.images()
        current = read_columns(images, ["id", "paths"], f"id IN ({_sql_list(appends)})")
        have = dict(zip(current["id"].to_pylist(), current["paths"].to_pylist()))
        updates = []
        for content_id, records in appends.items():
            if content_id not in have:
                continue  # cannot happen: paths are appended only to ids committed before
            paths = list(have[content_id] or [])
            mtime = None
            for path, mtime_ns in records:
                if path in paths:
                    self.already_listed += count
                else:
                    paths.append(path)
                    mtime = mtime_ns
            if mtime is not None:
                updates.append({"id": content_id, "paths": paths, "mtime_ns": mtime})
        if updates:
            sch = pa.schema([self.images_schema.field(n) for n in ("id", "paths", "mtime_ns")])
            (images.merge_insert("id").when_matched_update_all()
             .execute(pa.Table.from_pylist(updates, schema=sch)))
            self.touched.add(schema.IMAGES)


# -- the run ---------------------------------------------------------------------------------------


class _HostResults:
    """A batch's expert outputs on their way to host memory (asynchronously on CUDA)."""

    def __init__(self, feats):
        tensors = {name: getattr(feats, name) for name in EMBEDDING_FIELDS}
        self.event = None
        if any(t.device.type == "cuda" for t in tensors.values()):
            tensors = {k: t.to("cpu", non_blocking=True) for k, t in tensors.items()}
            self.event = torch.cuda.Event()
            self.event.record()
        self.tensors = tensors

    def wait(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {k: t.cpu().numpy() for k, t in self.tensors.items()}


@dataclass
class _Pending:
    """One batch: launched on the device, applied to the chunk once its results are back."""

    items: list[Item]  # computed rows, in order
    results: _HostResults | None
    records: list[tuple[str, Item]]  # (kind, item) for the rest: failed, known, duplicate, touched


def _load(model, weights_dir, device):
    if model is not None:
        return model() if callable(model) and not isinstance(model, torch.nn.Module) else model
    from faramir.download import resolve_weights_dir
    from faramir.weights import load_model

    return load_model(resolve_weights_dir(weights_dir, download=True), resolve_device(device))


def ingest(
    paths: Sequence[str | os.PathLike],
    *,
    db: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    model=None,
    recursive: bool = False,
    file_list: str | os.PathLike | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    retry_failed: bool = False,
    commit_every: int = COMMIT_ROWS,
    commit_seconds: float = COMMIT_SECONDS,
) -> Iterator[IngestEvent]:
    """Ingest image files into the cache at `db` (default: `store.db.default_db()`), yielding
    progress events; the last is an `IngestSummary`.

    `model` is a loaded `FaramirModel`, or a function returning one, called only when some file
    has to be read; without it the model is loaded from `weights_dir` (resolved, and downloaded
    into the default directory if needed, by `faramir.download`) onto `device`.
    """
    from faramir.model import PRECISIONS

    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if batch_size < 1 or commit_every < 1:
        raise InputError("batch_size and commit_every must be at least 1")
    started = time.monotonic()
    sources = discover([os.fspath(p) for p in paths], recursive,
                       os.fspath(file_list) if file_list is not None else None)
    cache = Cache.open(db, create=True)
    known = cached_ids(cache)
    plan = _plan(cache, sources, known, retry_failed)
    yield IngestPlan(cache.uri, plan.found, len(plan.to_read), plan.unchanged, len(plan.skipped))

    counts = {"new": 0, "known": 0, "touched": 0, "duplicate": 0, "failed": 0}
    failures: list[FailedFile] = list(plan.skipped)
    writer = None
    compute_s = 0.0
    if plan.to_read:
        model = _load(model, weights_dir, device)
        images_schema, scorers = _prepare(cache, model)
        writer = _Writer(cache, images_schema, scorers)
        compute_started = time.monotonic()
        yield from _run(model, plan, known, writer, counts, failures, batch_size, workers,
                        precision, commit_every, commit_seconds)
        compute_s = time.monotonic() - compute_started

    compacted = []
    for name in sorted(writer.touched if writer else ()):
        table = cache.table(name)
        if table.stats()["fragment_stats"]["num_small_fragments"] >= COMPACT_AT:
            table.optimize(cleanup_older_than=KEEP_VERSIONS)
            compacted.append(name)

    # Scalar indexes on the filter columns, and the ANN index once the table is large enough
    # (store.index): a collection grown by ingest alone is indexed like a rescored one.
    indexed = ensure_indexes(cache) if writer is not None and writer.touched else []

    already = writer.already_listed if writer else 0
    yield IngestSummary(
        db=cache.uri,
        found=plan.found,
        new=counts["new"],
        unchanged=plan.unchanged + counts["touched"] + already,
        duplicate=counts["duplicate"] + counts["known"] - already,
        failed=len(failures),
        failures=failures,
        elapsed_s=time.monotonic() - started,
        compute_s=compute_s,
        compacted=compacted,
        indexed=indexed,
    )


def _run(model, plan: _Plan, known: set[str], writer: _Writer, counts: dict, failures: list,
         batch_size: int, workers: int | None, precision: str, commit_every: int,
         commit_seconds: float) -> Iterator[IngestProgress]:
    cfg = model.info.config
    fingerprint = model.info.experts_fingerprint
    in_run: set[str] = set()  # ids computed in this run (a later copy is only a new path)
    chunk = _Chunk()
    last_commit = t0 = time.monotonic()
    done = 0
    pending: _Pending | None = None

    def apply(p: _Pending) -> None:
        """Add one finished batch to the chunk: rows first, then paths that may refer to them."""
        nonlocal done
        if p.items:
            arrays = p.results.wait()
            for name in EMBEDDING_FIELDS:
                chunk.arrays[name].append(arrays[name])
            for it in p.items:
                entry = plan.entries[it.index]
                chunk.row_of[it.sha256] = len(chunk.rows)
                chunk.rows.append({
                    "id": it.sha256, "paths": [it.source.path], "size": it.size,
                    "mtime_ns": it.mtime_ns, "width": it.facts.width, "height": it.facts.height,
                    "format": it.facts.format, "mode": it.facts.mode,
                    "experts_fingerprint": fingerprint, "precision": precision,
                })
                chunk.files.append(_files_row(it))
                if entry.was_failure:
                    chunk.cleared_failures.append(it.source.path)
            counts["new"] += len(p.items)
        for kind, it in p.records:
            entry = plan.entries[it.index]
            if kind == "failed":
                size, mtime = (it.size, it.mtime_ns) if it.sha256 else (entry.size, entry.mtime_ns)
                now = datetime.now(timezone.utc)
                chunk.failures.append({"path": it.source.path, "size": size, "mtime_ns": mtime,
                                       "reason": it.error or "not decoded", "failed_at": now})
                failures.append(FailedFile(it.source.path, it.error or "not decoded", now))
                if entry.prev_id is not None:
                    chunk.dropped_files.append(it.source.path)
                counts["failed"] += 1
                continue
            if kind != "touched":
                chunk.add_path(it.sha256, it.source.path, it.mtime_ns)
            chunk.files.append(_files_row(it))
            if entry.was_failure:
                chunk.cleared_failures.append(it.source.path)
            counts[kind] += 1
        n = len(p.items) + len(p.records)
        chunk.n += n
        done += n

    def commit_if_due(force: bool = False) -> None:
        nonlocal chunk, last_commit
        if chunk.n and (force or chunk.n >= commit_every or time.monotonic() - last_commit >= commit_seconds):
            writer.put(chunk)
            chunk = _Chunk()
            last_commit = time.monotonic()

    batches = _forked_quietly(iter_batches(
        plan.to_read, batch_size, workers, known=known.__contains__,
        pin_memory=model.device.type == "cuda", res=(cfg.backbone_res, cfg.quality_res),
    ))
    finished = False
    try:
        for batch in batches:
            warnings: list[str] = []
            records: list[tuple[str, Item]] = []
            compute: list[int] = []  # rows of batch.xb to run
            for it in batch.others:
                records.append(("failed", it) if it.error else (_known_kind(it, plan), it))
            for row, it in enumerate(batch.items):
                warnings.extend(f"{it.source.path}: {w}" for w in it.warnings)
                if it.sha256 in known:
                    records.append((_known_kind(it, plan), it))
                elif it.sha256 in in_run:
                    records.append(("duplicate", it))
                else:
                    in_run.add(it.sha256)
                    compute.append(row)
            results = None
            if compute:
                xb, xq = batch.xb, batch.xq
                if len(compute) < len(batch.items):
                    index = torch.tensor(compute)
                    xb, xq = xb.index_select(0, index), xq.index_select(0, index)
                results = _HostResults(model.features(xb, xq, precision))
            # The device works on this batch while the previous one is written down.
            if pending is not None:
                apply(pending)
                commit_if_due()
            pending = _Pending([batch.items[r] for r in compute], results, records)
            yield IngestProgress(len(plan.to_read), done, counts["new"],
                                 counts["known"] + counts["duplicate"] + counts["touched"],
                                 counts["failed"], time.monotonic() - t0, warnings)
        if pending is not None:
            apply(pending)
            pending = None
        finished = True
    finally:
        # Interrupted (Ctrl-C, an error, a consumer that stopped): keep what was computed.
        try:
            if not finished and pending is not None and writer.error is None:
                apply(pending)
            if writer.error is None:
                commit_if_due(force=True)
        finally:
            writer.close()
    yield IngestProgress(len(plan.to_read), done, counts["new"],
                         counts["known"] + counts["duplicate"] + counts["touched"],
                         counts["failed"], time.monotonic() - t0)


def _forked_quietly(batches: Iterator) -> Iterator:
    """Start the decode workers without lancedb's fork warning. Forking is safe here: the
    workers never call LanceDB, and they are forked before the writer thread starts, while no
    LanceDB operation is running. Fork (not spawn) lets them share the cached-id set for free."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "lancedb fork support is experimental", RuntimeWarning)
        warnings.filterwarnings("ignore", "lance is not fork-safe", UserWarning)  # pylance's wording
        first = next(batches, None)  # the DataLoader forks its workers here
    if first is not None:
        yield first
        yield from batches


def _known_kind(it: Item, plan: _Plan) -> str:
    """A file whose content is already cached: the same content at this path before (a touched
    file: only its files row changes), or content cached under other paths."""
    return "touched" if plan.entries[it.index].prev_id == it.sha256 else "known"


def _files_row(it: Item) -> dict:
    return {"path": it.source.path, "id": it.sha256, "size": it.size, "mtime_ns": it.mtime_ns}


def ingest_all(paths: Sequence[str | os.PathLike], **kwargs) -> IngestSummary:
    """Run `ingest` to the end and return its summary."""
    summary = None
    for event in ingest(paths, **kwargs):
        summary = event
    assert isinstance(summary, IngestSummary)
    return summary
