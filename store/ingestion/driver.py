"""`ingest`: plan, run, write, and end-of-run housekeeping; the one entry point of stage one.

The driver plans (`plan`), recognises cached content by its hash (`recognise`), loads the model
only when some file holds new content, runs the plan (`run`, the model thread) while a writer
thread commits (`write`), then scores any row a head has not scored
(`faramir.store.heads.unscored`), and finally compacts and indexes what it touched. An ingest that
finds nothing new never imports torch and touches nothing; one that finds only renamed or copied
content reads and hashes those files, records their paths, and never imports torch either; a
cache is created only once the model has loaded, so a run that cannot load it leaves no empty
cache behind.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta

from faramir.config import PRECISIONS
from faramir.errors import InputError
from faramir.reading import check_decode
from faramir.sources import discover
from faramir.store import limits, schema
from faramir.store.cache import Cache, check_writable, default_db, is_conflict, retrying
from faramir.store.errors import NoCache, storage_error
from faramir.store.ingestion.events import IngestEvent, IngestPlan, IngestSummary
from faramir.store.ingestion.plan import make_plan
from faramir.store.ingestion.recognise import recognise

COMMIT_ROWS = 1024  # files per commit: ~10 MB of rows at full size, ~1,000 fragments per 1M images
COMMIT_SECONDS = 60.0  # ...or this much compute, so a crash on a slow CPU loses at most a minute
COMPACT_AT = 8  # compact a table at the end of a run once it holds this many small fragments
KEEP_VERSIONS = timedelta(days=1)  # older table versions are removed by the end-of-run compaction


def _storage_errors_in_one_line(run):
    """A full disk or a cache that cannot be written, met anywhere in the run (creating the cache,
    the writer thread, compaction), raised as `faramir.store.errors.DiskFull` or `ReadOnlyCache`
    rather than as the storage layer's own error."""

    @functools.wraps(run)
    def wrapper(*args, db=None, **kwargs):
        try:
            yield from run(*args, db=db, **kwargs)
        except Exception as ex:
            refused = storage_error(ex, getattr(db, "uri", None) or (os.fspath(db) if db is not None else default_db()))
            if refused is None:
                raise
            raise refused from ex

    return wrapper


@_storage_errors_in_one_line
def ingest(
    paths: Sequence[str | os.PathLike],
    *,
    db: str | os.PathLike | Cache | None = None,
    weights_dir: str | os.PathLike | None = None,
    model=None,
    recursive: bool = False,
    file_list: str | os.PathLike | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    retry_failed: bool = False,
    commit_every: int = COMMIT_ROWS,
    commit_seconds: float = COMMIT_SECONDS,
    ray: str | None = None,
    decode: str = "faithful",
) -> Iterator[IngestEvent]:
    """Ingest image files into the cache at `db` (default: `faramir.store.cache.default_db()`), yielding
    progress events: an `IngestPlan`, an `IngestProgress` per batch, and last an `IngestSummary`.

    `model` is a `FaramirModel` loaded for `precision`, or a function returning one, called only
    when some file holds content the cache lacks; without it the model is loaded from `weights_dir`
    (resolved, and downloaded if needed, by `faramir.download`) onto `device` for `precision`.

    `decode` is "faithful" (upstream's preprocessing, bit for bit) or "fast" (`faramir.fast_decode`:
    large images decoded smaller); a cache holds the vectors of one of them only.

    `ray` runs the reading and the experts on Ray Data (`faramir.store.ingestion.ray_run`): "local" starts
    Ray on this machine, "auto", "ray://HOST:PORT" or "HOST:PORT" joins a cluster. The plan and
    the commits stay here; `model` (on the CPU) only fixes the weights, which each model actor
    loads from its `weights_dir` onto `device`; `workers` does not apply. `compile` runs the
    experts through torch.compile for batches of `batch_size` (`faramir.compiled`)."""
    _check_options(precision, batch_size, workers, commit_every, ray, decode)
    started = time.monotonic()
    sources = discover([os.fspath(p) for p in paths], recursive,
                       os.fspath(file_list) if file_list is not None else None)
    cache, known, plan, uri = _plan(db, sources, retry_failed)
    yield IngestPlan(uri, plan.found, len(plan.to_read), plan.unchanged, len(plan.skipped))

    run = writer = None
    compute_s = 0.0
    if plan.to_read:
        check_writable(uri)  # before the model loads
        recognised, to_decode = recognise(cache, plan, known)
        options = {"precision": precision, "commit_every": commit_every, "commit_seconds": commit_seconds,
                   "decode": decode, "recognised": recognised, "to_decode": to_decode}
        cache, run = _start(db, cache, plan, known, (model, weights_dir, device, precision),
                            batch_size if compile else None, ray, options)
        writer = run.writer
        compute_started = time.monotonic()
        yield from run.progress(batch_size, workers)
        compute_s = time.monotonic() - compute_started
    elif cache is not None and cache.has_images() and not cache.get_meta("experts_fingerprint"):
        _reclaim(cache, resolve_model(model, weights_dir, device, precision), decode)
    compacted, indexed = _housekeeping(cache, writer.touched if writer is not None else set())
    yield _summary(uri, plan, run, writer, time.monotonic() - started, compute_s, compacted, indexed)


def _check_options(precision: str, batch_size: int, workers: int | None, commit_every: int, ray: str | None,
                   decode: str) -> None:
    check_decode(decode)
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    limits.check("batch size", batch_size, 1, limits.MAX_BATCH, InputError)
    if workers is not None:
        limits.check("workers", workers, 0, limits.MAX_WORKERS, InputError)
    if commit_every < 1:
        raise InputError("commit_every must be at least 1")
    if ray is not None:
        from faramir.store.ingestion.ray_cluster import check

        check(ray)


def _plan(db, sources, retry_failed: bool):
    """(the cache at `db` or None where there is none yet, its cached ids, the plan, the cache's
    location). Nothing is made here: a cache is made once the model has loaded."""
    try:
        cache = Cache.open(db, warn_generated=False)
    except NoCache:
        cache = None
    known = cache.ids() if cache is not None else set()
    uri = cache.uri if cache is not None else os.fspath(db) if db is not None else default_db()
    return cache, known, make_plan(cache, sources, known, retry_failed), uri


def _reclaim(cache: Cache, model, decode: str) -> None:
    """The meta table lost its experts claim (a power cut can lose its newest version): restore it
    for the vectors of this `decode`."""
    from faramir.store.ingestion.write import prepare

    prepare(cache, model, decode)


def _start(db, cache: Cache | None, plan, known: set[str], load: tuple, compile_batch: int | None,
           ray: str | None, options: dict):
    """(the cache, made now if new, a run over the plan's files): the model loads first, for this
    machine and compiled if asked, or on the CPU only to fix the weights where Ray's model actors
    each load (and compile) their own; and not at all when every file was recognised by its hash
    (then the cache exists: it holds their content)."""
    if not options["to_decode"]:
        return cache, _recorded_run(cache, plan, known, options)
    model, weights_dir, device, precision = load
    here = ray is None
    model = resolve_model(model, weights_dir, device if here else "cpu", precision, compile_batch if here else None)
    cache = Cache.open(db if cache is None else cache, create=True)  # only now: the model loaded
    if here:
        return cache, _local_run(cache, plan, known, model, options)
    return cache, _ray_run(cache, plan, known, model, ray, device, compile_batch, options)


def _local_run(cache: Cache, plan, known: set[str], model, options: dict):
    """A run on this machine: decode workers, the model here (compiled already), a writer thread."""
    from faramir.store.ingestion.run import Run
    from faramir.store.ingestion.write import Writer, prepare

    return Run(model, plan, known, Writer(cache, *prepare(cache, model, options["decode"])), **options)


def _recorded_run(cache: Cache, plan, known: set[str], options: dict):
    """A run with nothing to decode: the recognised files' paths recorded, no model, no torch."""
    from faramir.store.ingestion.run import Run
    from faramir.store.ingestion.write import Writer

    return Run(None, plan, known, Writer(cache, cache.images().schema, {}), **options)


def _ray_run(cache: Cache, plan, known: set[str], model, address: str, device: str, compile_batch: int | None,
             options: dict):
    """A run on Ray. The driver's model (on the CPU) only fixes the weights and registers the
    released head in a new cache; it is dropped here, and each model actor loads its own."""
    from faramir.store.ingestion.fragments import FragmentWriter
    from faramir.store.ingestion.ray_run import RayRun
    from faramir.store.ingestion.write import prepare

    writer = FragmentWriter(cache, *prepare(cache, model, options["decode"]))
    return RayRun(address, model.info, plan, known, writer, device=device, compile_batch=compile_batch,
                  **options)


def _summary(db: str, plan, run, writer, elapsed_s: float, compute_s: float, compacted: list[str],
             indexed: list[str]) -> IngestSummary:
    """The counts of a finished ingest: the plan's, the run's and the writer's. They are what this
    run committed: a row another process inserted first is not new here (its path counts as
    unchanged if that process listed it too, else as a duplicate), and a path already listed
    (a resumed run, or another process) counts as unchanged, not duplicate."""
    counts = run.counts if run is not None else {"new": 0, "known": 0, "touched": 0, "duplicate": 0}
    already = writer.already_listed if writer is not None else 0
    lost = getattr(writer, "lost_inserts", 0)
    failures = plan.skipped + (run.failures if run is not None else [])
    return IngestSummary(
        db=db, found=plan.found, new=counts["new"] - lost,
        unchanged=plan.unchanged + counts["touched"] + already,
        duplicate=counts["duplicate"] + counts["known"] + lost - already,
        failed=len(failures), failures=failures,
        elapsed_s=elapsed_s, compute_s=compute_s, compacted=compacted, indexed=indexed,
        waits=dict(run.waits) if run is not None else {},
    )


def _housekeeping(cache: Cache | None, touched: set[str]) -> tuple[list[str], list[str]]:
    """(tables compacted, columns indexed) after a run that wrote to the `touched` tables: first
    every row a registered head has not scored gets its scores (`faramir.store.heads.unscored`: a rescore raced this
    run, or an earlier run was killed before doing this), and new rows their place on the map
    where the cache has one; then each table is compacted once it
    holds `COMPACT_AT` small fragments (versions younger than `KEEP_VERSIONS` kept: a power cut
    can leave a broken latest manifest, and an older version is the way back), and the indexes
    brought up to date (`faramir.store.vectors.indexes.ensure_indexes`), so a collection grown by ingest alone is
    indexed like a rescored one. Nothing when nothing changed."""
    if cache is None:
        return [], []
    from faramir.store.heads.unscored import fill_gaps

    if fill_gaps(cache):
        touched = touched | {schema.IMAGES}
    if not touched:
        return [], []
    if schema.IMAGES in touched and _place_on_map(cache):
        touched = touched | {schema.LAYOUT}
    from faramir.store.vectors.indexes import ensure_indexes

    compacted = [name for name in sorted(touched)
                 if _unless_contested(lambda: compact_if_due(cache.table(name)), False)]
    return compacted, _unless_contested(lambda: ensure_indexes(cache), [])


def _place_on_map(cache: Cache) -> int:
    """Place the new rows on the cache's map, when it has one (`faramir.store.map.layout.place_new`:
    with the fitted model, never refitting); how many were placed."""
    from faramir.store.map.layout import place_new

    return _unless_contested(lambda: place_new(cache), 0)


def compact_if_due(table) -> bool:
    """Compact a LanceDB table once it holds `COMPACT_AT` small fragments (versions younger than
    `KEEP_VERSIONS` kept); whether it did."""
    if table.stats()["fragment_stats"]["num_small_fragments"] < COMPACT_AT:
        return False
    table.optimize(cleanup_older_than=KEEP_VERSIONS)
    return True


def _unless_contested(housekeeping, otherwise):
    """`housekeeping()`, or `otherwise` when other processes writing the cache keep winning its
    commit: compaction and indexes are what the next run does too, never worth failing a run."""
    try:
        return retrying(housekeeping, attempts=3)
    except Exception as ex:
        if not is_conflict(ex):
            raise
        return otherwise


def resolve_model(model, weights_dir, device, precision, compile_batch: int | None = None):
    """The model an ingest computes with: `model` (a loaded one, or a callable that loads it) or,
    for None, the weights in `weights_dir` loaded for `device`; checked for `precision`, and
    compiled for `compile_batch` when given."""
    if model is None:
        from faramir.devices import resolve_device
        from faramir.download import resolve_weights_dir
        from faramir.weights import load_model

        model = load_model(resolve_weights_dir(weights_dir, download=True), resolve_device(device), precision)
    else:
        import torch

        model = model() if callable(model) and not isinstance(model, torch.nn.Module) else model
    if model.precision != precision:
        raise InputError(f"precision {precision!r}: the model given was loaded for {model.precision}")
    if compile_batch is not None and model.fixed_batch != compile_batch:
        from faramir.compiled import compile_experts

        compile_experts(model, compile_batch)
    return model


def ingest_all(paths: Sequence[str | os.PathLike], **kwargs) -> IngestSummary:
    """Run `ingest` to the end and return its summary."""
    summary = None
    for event in ingest(paths, **kwargs):
        summary = event
    assert isinstance(summary, IngestSummary)
    return summary
