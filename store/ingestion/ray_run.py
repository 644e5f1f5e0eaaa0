"""Running an ingest's plan on Ray Data (`faramir ingest --ray ADDRESS`): the driver plans and
commits, the workers read, compute and write fragments, and never commit.

Everything but the middle of a run is the local ingest's: the plan (unchanged files are never
read), the rows (`write.image_row`, `write.images_table`: every registered head scores them), the
accounting of each file (`Run._account`), the commit order and the end-of-run compaction and
index refresh (`driver`). The middle is a Ray Data pipeline (`ray_tasks`):

    planned files ─► read tasks (CPU) ─► model actors (`ActorPoolStrategy`: one per GPU where
    the cluster has GPUs, else one per node) ─► fragment tasks (CPU) ─► this process, which
    commits every `commit_every` files (or `commit_seconds`) one chunk: an Append of its
    fragments, then its paths, ``files`` and ``failures`` rows (`fragments.FragmentWriter`).

Stored once: cached content is dropped before decoding; a content met twice in the run goes on
to the model once, and its later copies are paths of the first, accounted for (each waiting if
need be) in the chunk that commits the first copy's row, so a path never refers to an
uncommitted row.

Crash safety is the local ingest's: fragments are invisible until their Append; a driver killed
mid-run loses the chunk in flight, and the rerun (with or without --ray) reads its files again.
The fragments of a chunk never committed are unreferenced files, which Lance's cleanup deletes
once they are older than its grace period (7 days; the end-of-run `optimize` runs it).

Where things live: workers open the image paths and write into the cache by the driver's names,
and each model actor loads the weights from the driver's weights directory, so all three must be
at the same path on every node (a shared filesystem); the cache may be an object-store URI
instead. The driver loads the weights too, on its CPU, only to fingerprint them and to register
the released head in a new cache, as a local ingest does.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator

import pyarrow as pa

from faramir.config import decoded_fingerprint
from faramir.errors import InputError
from faramir.reading import Item
from faramir.sources import Source
from faramir.store.ingestion import ray_tasks
from faramir.store.ingestion.events import IngestProgress
from faramir.store.ingestion.fragments import Fragment, FragmentChunk, FragmentWriter
from faramir.store.ingestion.plan import Plan
from faramir.store.ingestion.ray_cluster import connect, our_error
from faramir.store.ingestion.run import Run
from faramir.store.schema import path_from_column

FRAGMENT_ROWS = 256  # files per fragment task at most with GPUs (~2.5 MB of rows at full size)
CPU_FRAGMENT_ROWS = 32  # ...and without: Ray hands a fragment task its files only once it has
# them all, and a CPU cluster is slow to compute 256 (a driver killed meanwhile loses them)
FRAGMENT_CPUS = 0.25  # scoring and writing a fragment is brief; this bounds how many run at once
GPU_CALLS = 2  # batches a GPU model actor works on at once
ACTOR_CPUS = 0.5  # not the read tasks' 1: Ray Data fuses maps that ask for the same resources,
# and reading inside the model actor would no longer overlap the experts


class RayRun(Run):
    """One pass over a plan's files on Ray: `progress()` yields an IngestProgress per block of
    results and a last one; `counts` and `failures` as a `Run`'s."""

    def __init__(self, address: str, info, plan: Plan, known: set[str], writer: FragmentWriter, *,
                 device: str, compile_batch: int | None = None, precision: str, commit_every: int,
                 commit_seconds: float, decode: str = "faithful", recognised=(), to_decode=None):
        super().__init__(None, plan, known, writer, precision=precision, commit_every=commit_every,
                         commit_seconds=commit_seconds, decode=decode, recognised=recognised, to_decode=to_decode)
        self.fingerprint = decoded_fingerprint(info.experts_fingerprint, decode)
        self.address, self.info, self.device, self.compile_batch = address, info, device, compile_batch
        self.chunk = FragmentChunk()
        self.waiting: dict[str, list[Item]] = {}  # later copies of content whose first copy is not in yet

    def progress(self, batch_size: int, workers: int | None = None) -> Iterator[IngestProgress]:
        """`workers` does not apply: Ray sizes the reading to the cluster's CPUs."""
        started_here = connect(self.address)
        try:
            yield from self._drive(batch_size)
        except Exception as ex:
            ours = our_error(ex)
            if ours is None or ours is ex:
                raise
            raise ours from None
        finally:
            if started_here:
                import ray

                ray.shutdown()

    def _drive(self, batch_size: int) -> Iterator[IngestProgress]:
        results, _claims = self._pipeline(batch_size)  # (the claims actor lives while `_claims` does)
        try:
            for i in range(0, len(self.recognised), batch_size):  # recognised by the driver: paths only
                for it in self.recognised[i:i + batch_size]:
                    self._other(it)
                    self.done += 1
                self._commit_if_due()
                yield self._progress([])
            for out in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                warned = self._apply_output(out)
                self.done += out.num_rows
                self._commit_if_due()
                yield self._progress(warned)
            assert not self.waiting, f"{len(self.waiting)} later copies whose first copy never came back"
        finally:
            # Interrupted (Ctrl-C, an error, a consumer that stopped): keep what was received.
            try:
                if self.writer.error is None:
                    self._commit_if_due(force=True)
            finally:
                self.writer.close()
        yield self._progress([])

    def _pipeline(self, batch_size: int):
        """The Ray Data pipeline over the planned files, and the handle of its claims actor."""
        import ray
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller draws progress from our events
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)

        cfg, files = self.info.config, self.plan.to_read
        claims = ray.remote(num_cpus=0, max_restarts=0)(ray_tasks.Claims).remote()
        compute, gpus, actor_device = _actors(self.device)
        # One block per read task, of READ_FILES files: model batches then hold the files a local
        # ingest batches together (with a batch size dividing READ_FILES), so the embeddings are its.
        runs = [{"indexes": chunk, "paths": [files[i].display for i in chunk]}
                for chunk in (self.to_decode[i:i + ray_tasks.READ_FILES]
                              for i in range(0, len(self.to_decode), ray_tasks.READ_FILES))]
        ds = ray.data.from_items(runs, override_num_blocks=len(runs))
        ds = ds.map_batches(ray_tasks.read_files, batch_format="pyarrow", num_cpus=1, fn_kwargs={
            "known": ray_tasks.digests(self.known), "claims": claims, "res": (cfg.backbone_res, cfg.quality_res),
            "decode_mode": self.decode})
        ds = ds.map_batches(ray_tasks.Experts, batch_size=batch_size, batch_format="pyarrow", compute=compute,
                            num_cpus=ACTOR_CPUS, num_gpus=gpus, fn_constructor_kwargs={
                                "weights_dir": self.info.weights_dir, "fingerprint": self.info.experts_fingerprint,
                                "device": actor_device, "precision": self.precision,
                                "compile_batch": self.compile_batch})
        fragment_rows = min(self.commit_every, FRAGMENT_ROWS if gpus else CPU_FRAGMENT_ROWS)
        ds = ds.map_batches(ray_tasks.write_fragments, batch_size=fragment_rows, batch_format="pyarrow",
                            num_cpus=FRAGMENT_CPUS, fn_kwargs={
                                "uri": self.writer.uri, "images_schema": self.writer.images_schema,
                                "scorers": self.writer.scorers, "fingerprint": self.fingerprint,
                                "precision": self.precision})
        return ds, claims

    def _apply_output(self, out: pa.Table) -> list[str]:
        """One block of results. Ray hands over whatever is ready, up to all the files of a fast
        run at once, so a chunk is committed when due between two of its fragments."""
        records = [Item(r["index"], Source(path_from_column(r["path"]), r["path"]), r["size"], r["mtime_ns"], r["sha256"],
                        error=r["error"], known=r["known"], warnings=r["warnings"] or [])
                   for r in out.select(ray_tasks.RECORD_SCHEMA.names).to_pylist()]
        fragments = [pickle.loads(c) for c in out.column("fragment").to_pylist() if c is not None]
        stored = out.column("stored").to_pylist()
        assert {it.index for it, flag in zip(records, stored) if flag} == \
            {i for _, indexes in fragments for i in indexes}, "a fragment task's output came in pieces"
        for it, flag in zip(records, stored):
            if not flag:
                self._other(it)
        by_index = {it.index: it for it in records}
        for metadata, indexes in fragments:
            self._fragment(metadata, [by_index[i] for i in indexes])
            self._commit_if_due()
        return [f"{it.source.display}: {w}" for it in records for w in it.warnings]

    def _fragment(self, metadata, items: list[Item]) -> None:
        """A fragment: its rows' files are new, and the later copies waiting for them duplicates."""
        f = Fragment(metadata, [(it.sha256, it.source.display, it.mtime_ns) for it in items])
        for pos, it in enumerate(items):
            if it.sha256 in self.known or it.sha256 in self.in_run:  # only a retried task could repeat one
                f.drop.add(pos)
                self._account("duplicate", it)
            else:
                self.in_run.add(it.sha256)
                self._account("new", it)
                for later in self.waiting.pop(it.sha256, []):
                    self._account("duplicate", later)
        self.chunk.fragments.append(f)

    def _other(self, it: Item) -> None:
        """A file whose row is in no fragment: unreadable, cached already, or a later copy."""
        if it.error:
            self._account("failed", it)
        elif it.known:
            self._account(self._known_kind(it), it)
        elif it.sha256 in self.in_run:
            self._account("duplicate", it)
        else:  # its first copy is still on its way: accounted for in that copy's chunk
            self.waiting.setdefault(it.sha256, []).append(it)


def _actors(device: str):
    """(ActorPoolStrategy, GPUs per actor, actor device) for the cluster Ray is connected to."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if device in ("auto", "cuda") else 0
    if device == "cuda" and not gpus:
        raise InputError("--device cuda: the Ray cluster has no GPU; use --device auto or cpu")
    nodes = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1)
    return actor_strategy(gpus, nodes), 1 if gpus else 0, "cuda" if gpus else "cpu" if device == "auto" else device


def actor_strategy(gpus: int, nodes: int):
    """One model actor per GPU where the cluster has GPUs, each taking `GPU_CALLS` batches at once
    (double buffering: one batch is stacked into pinned memory and uploaded while the other
    computes); else one CPU actor per node (Ray Data spreads them), each using all its node's
    cores on one batch at a time, as a local ingest does (the same threads, the same vectors)."""
    from ray.data import ActorPoolStrategy

    if gpus:
        return ActorPoolStrategy(min_size=1, max_size=gpus, max_concurrent_calls_per_actor=GPU_CALLS,
                                 enable_true_multi_threading=True)
    return ActorPoolStrategy(size=max(1, nodes))
