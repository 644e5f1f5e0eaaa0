"""Running an ingest's plan: decode workers read and hash the files, the model computes new
content only, and finished batches become chunks for the writer (`faramir.store.ingestion.write`).

Content seen twice in one run is computed once; content already cached is never decoded (the
workers are given the cached ids, and files the driver recognised by their hash before loading
the model come in as `recognised`, read already). A source is opened by its `path` and recorded
(rows, files, failures, messages) by its `display`, the path's column text (see
`faramir.store.ingestion.plan`).

The device is never left waiting on this process: on CUDA a batch arrives in pinned memory, is
uploaded on a side stream while the previous batch computes, and is launched before the previous
one's results are copied back and handed to the writer thread. `Run.waits` says where the model
thread waited instead: for decoded batches, for the device, for the writer.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from faramir.config import decoded_fingerprint
from faramir.reading import Batch, Item
from faramir.store.ingestion.events import FailedFile, IngestProgress
from faramir.store.ingestion.plan import Plan
from faramir.store.ingestion.write import EMBEDDING_FIELDS, Chunk, Writer, image_row


class _HostResults:
    """A batch's expert outputs on their way to host memory (asynchronously on CUDA)."""

    def __init__(self, feats):
        import torch

        tensors = {name: getattr(feats, name) for name in EMBEDDING_FIELDS}
        self.event = None
        if any(t.device.type == "cuda" for t in tensors.values()):
            tensors = {k: t.to("cpu", non_blocking=True) for k, t in tensors.items()}
            self.event = torch.cuda.Event()
            self.event.record()
        self.tensors = tensors

    def wait(self) -> dict:
        if self.event is not None:
            self.event.synchronize()
        return {k: t.cpu().numpy() for k, t in self.tensors.items()}


class Uploads:
    """Host batches to the model's device. On CUDA on a side stream, which the compute stream waits
    for: the copy of one batch overlaps the compute of the one before (from pinned memory, the copy
    is asynchronous). Elsewhere the tensors stay where they are (the model moves them)."""

    def __init__(self, device):
        import torch

        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.device = device

    def __call__(self, *tensors):
        if self.stream is None:
            return tensors
        import torch

        with torch.cuda.stream(self.stream):
            moved = [t.to(self.device, non_blocking=True) for t in tensors]
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)
        for t in moved:
            t.record_stream(compute)  # not reused by the side stream before the compute is done
        return moved


@dataclass
class _Pending:
    """One batch: launched on the device, applied to the chunk once its results are back."""

    items: list[Item]  # computed rows, in order
    results: _HostResults | None
    records: list[tuple[str, Item]]  # (kind, item) for the rest: failed, known, duplicate, touched


class Run:
    """One pass over a plan's files: `progress()` yields an IngestProgress per batch and a last
    one; `counts` and `failures` hold what it found. Committed in chunks of `commit_every` files
    or `commit_seconds`, whichever comes first, and on the way out however it ends (an
    interrupt keeps what was computed).

    `recognised`: files of the plan read and hashed already, whose content is cached; `to_decode`:
    the indexes of the plan's files left to read (all of them by default). Without any, `model`
    may be None: nothing is decoded and nothing computed."""

    def __init__(self, model, plan: Plan, known: set[str], writer: Writer, *, precision: str,
                 commit_every: int, commit_seconds: float, decode: str = "faithful",
                 recognised: Sequence[Item] = (), to_decode: Sequence[int] | None = None):
        self.model, self.plan, self.known, self.writer = model, plan, known, writer
        self.precision, self.commit_every, self.commit_seconds = precision, commit_every, commit_seconds
        self.decode, self.recognised = decode, list(recognised)
        self.to_decode = list(range(len(plan.to_read))) if to_decode is None else list(to_decode)
        self.fingerprint = decoded_fingerprint(model.info.experts_fingerprint, decode) if model is not None else None
        self.counts = {"new": 0, "known": 0, "touched": 0, "duplicate": 0, "failed": 0}
        self.failures: list[FailedFile] = []
        self.in_run: set[str] = set()  # ids computed in this run (a later copy is only a new path)
        self.chunk = Chunk()
        self.done = 0
        self.waits = {"decoding": 0.0, "device": 0.0, "writer": 0.0}  # seconds the model thread waited
        self.uploads: Uploads | None = None  # made with the decode workers
        self.last_commit = self.t0 = time.monotonic()

    def progress(self, batch_size: int, workers: int | None) -> Iterator[IngestProgress]:
        """The recognised files first (their decode workers started already), then the decoded ones."""
        recognised = (Batch([], self.recognised[i:i + batch_size], None, None)
                      for i in range(0, len(self.recognised), batch_size))
        if not self.to_decode:
            yield from self._run(recognised)  # nothing to decode: no torch, no model
        else:
            from faramir.decoding import iter_batches
            from faramir.devices import torch_threads, usable_cores

            cfg, device = self.model.info.config, self.model.device
            self.uploads = Uploads(device)
            started = time.monotonic()
            decoded = _forked_quietly(iter_batches(
                self.plan.to_read, batch_size, workers, known=self.known.__contains__,
                pin_memory=device.type == "cuda", res=(cfg.backbone_res, cfg.quality_res),
                decode_mode=self.decode, indexes=self.to_decode,
            ))
            self.waits["decoding"] += time.monotonic() - started  # the first batch
            # The experts on this machine's cores, as a Ray model actor runs them (`torch_threads`);
            # beside a GPU one thread, leaving the cores to the decode workers.
            with torch_threads(usable_cores() if device.type == "cpu" else 1):
                yield from self._run(itertools.chain(recognised, decoded))
        yield self._progress([])

    def _run(self, batches: Iterator[Batch]) -> Iterator[IngestProgress]:
        """Each batch launched on the device while the previous one is written down; committed in
        chunks, and on the way out however it ends (an interrupt keeps what was computed)."""
        pending: _Pending | None = None
        finished = False
        try:
            for batch in self._waiting_for(batches):
                launched, warned = self._launch(batch)
                if pending is not None:  # the device works on this batch while the previous one is written down
                    self._apply(pending)
                    self._commit_if_due()
                pending = launched
                yield self._progress(warned)
            if pending is not None:
                self._apply(pending)
                pending = None
            finished = True
        finally:
            # Interrupted (Ctrl-C, an error, a consumer that stopped): keep what was computed.
            try:
                if not finished and pending is not None and self.writer.error is None:
                    self._apply(pending)
                if self.writer.error is None:
                    self._commit_if_due(force=True)
            finally:
                self.writer.close()

    def _waiting_for(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """`batches`, timing how long each was waited for (`waits["decoding"]`)."""
        batches = iter(batches)
        while True:
            started = time.monotonic()
            batch = next(batches, None)
            self.waits["decoding"] += time.monotonic() - started
            if batch is None:
                return
            yield batch

    def _progress(self, warned: list[str]) -> IngestProgress:
        c = self.counts
        return IngestProgress(len(self.plan.to_read), self.done, c["new"], c["known"] + c["duplicate"] + c["touched"],
                              c["failed"], time.monotonic() - self.t0, warned)

    def _launch(self, batch: Batch) -> tuple[_Pending, list[str]]:
        """Sort a decoded batch into rows to compute (launched on the device now) and records."""
        warned: list[str] = []
        records: list[tuple[str, Item]] = []
        compute: list[int] = []  # rows of batch.xb to run
        for it in batch.others:
            records.append(("failed", it) if it.error else (self._known_kind(it), it))
        for row, it in enumerate(batch.items):
            warned.extend(f"{it.source.display}: {w}" for w in it.warnings)
            if it.sha256 in self.known:
                records.append((self._known_kind(it), it))
            elif it.sha256 in self.in_run:
                records.append(("duplicate", it))
            else:
                self.in_run.add(it.sha256)
                compute.append(row)
        results = None
        if compute:
            import torch

            xb, xq = self.uploads(batch.xb, batch.xq)  # the whole batch: a pinned batch stays pinned
            if len(compute) < len(batch.items):
                index = torch.tensor(compute, device=xb.device)
                xb, xq = xb.index_select(0, index), xq.index_select(0, index)
            results = _HostResults(self.model.features(xb, xq, self.precision))
        return _Pending([batch.items[r] for r in compute], results, records), warned

    def _apply(self, p: _Pending) -> None:
        """Add one finished batch to the chunk: rows first, then paths that may refer to them."""
        chunk = self.chunk
        if p.items:
            started = time.monotonic()
            arrays = p.results.wait()
            self.waits["device"] += time.monotonic() - started
            for name in EMBEDDING_FIELDS:
                chunk.arrays[name].append(arrays[name])
            for it in p.items:
                chunk.row_of[it.sha256] = len(chunk.rows)
                chunk.rows.append(image_row(it, self.fingerprint, self.precision))
                self._account("new", it)
        for kind, it in p.records:
            self._account(kind, it)
        self.done += len(p.items) + len(p.records)

    def _account(self, kind: str, it: Item) -> None:
        """One file read, into the chunk: `kind` is new (its row is in the chunk already),
        failed, known or duplicate (a path of content cached or computed before), or touched."""
        self.chunk.n += 1
        if kind == "failed":
            self._failed(it)
            return
        if kind not in ("new", "touched"):
            self.chunk.add_path(it.sha256, it.source.display, it.mtime_ns)
        self._file_read(it)
        self.counts[kind] += 1

    def _file_read(self, it: Item) -> None:
        """A file that read fine: its files row, and its failure (if it had one) forgotten."""
        self.chunk.files.append({"path": it.source.display, "id": it.sha256, "size": it.size, "mtime_ns": it.mtime_ns})
        if self.plan.entries[it.index].was_failure:
            self.chunk.cleared_failures.append(it.source.display)

    def _failed(self, it: Item) -> None:
        entry = self.plan.entries[it.index]
        size, mtime = (it.size, it.mtime_ns) if it.sha256 else (entry.size, entry.mtime_ns)
        now = datetime.now(timezone.utc)
        reason = it.error or "not decoded"
        self.chunk.failures.append({"path": it.source.display, "size": size, "mtime_ns": mtime,
                                    "reason": reason, "failed_at": now})
        self.failures.append(FailedFile(it.source.display, reason, now))
        if entry.prev_id is not None:
            self.chunk.dropped_files.append(it.source.display)
        self.counts["failed"] += 1

    def _commit_if_due(self, force: bool = False) -> None:
        chunk = self.chunk
        if chunk.n and (force or chunk.n >= self.commit_every
                        or time.monotonic() - self.last_commit >= self.commit_seconds):
            started = time.monotonic()
            self.writer.put(chunk)
            self.waits["writer"] += time.monotonic() - started
            self.chunk = type(chunk)()  # a run on Ray collects fragments in a Chunk subclass
            self.last_commit = time.monotonic()

    def _known_kind(self, it: Item) -> str:
        """A file whose content is already cached: the same content at this path before (a touched
        file: only its files row changes), or content cached under other paths."""
        return "touched" if self.plan.entries[it.index].prev_id == it.sha256 else "known"


def _forked_quietly(batches: Iterator) -> Iterator:
    """Start the decode workers now, without lancedb's fork warning, and return the batches.
    Forking is safe here: the workers never call LanceDB, and they are forked before the writer
    thread starts, while no LanceDB operation is running. Fork (not spawn) lets them share the
    cached-id set for free."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "lancedb fork support is experimental", RuntimeWarning)
        warnings.filterwarnings("ignore", "lance is not fork-safe", UserWarning)  # pylance's wording
        first = next(batches, None)  # the DataLoader forks its workers here
    return iter(()) if first is None else itertools.chain([first], batches)
