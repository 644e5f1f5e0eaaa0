"""What the Ray workers of `faramir ingest --ray` run (`faramir.store.ingestion.ray_run` wires them up).

    read_files       CPU task: read and hash `READ_FILES` files; content already cached is not
                     decoded, the rest is preprocessed, and content met twice in this run is
                     claimed once (`Claims`), so only its first copy goes on to the model
    Experts          model actor: loads the weights once, runs the experts on decoded files
    write_fragments  CPU task: every registered head scores the new rows, which become Lance
                     fragments of the cache's ``images`` dataset (lance-ray's `write_fragment`):
                     written, never committed (the driver commits)

Each step returns one row per file, with the columns of `RECORD_SCHEMA` first: what the driver
needs to account for the file as a local ingest does.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from faramir.preprocess import ImageFacts
from faramir.reading import Item, read_item
from faramir.sources import Source
from faramir.store.errors import ExpertsMismatch
from faramir.store.ingestion.write import EMBEDDING_FIELDS, image_row, images_table
from faramir.store.schema import path_from_column

READ_FILES = 32  # files per read task: its scheduling is small against reading and decoding them

RECORD_SCHEMA = pa.schema([  # per file, from the read task to the driver
    pa.field("index", pa.int64()),  # into the plan's to_read
    pa.field("path", pa.string()),
    pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("error", pa.string()),
    pa.field("known", pa.bool_()),  # content already cached: not decoded
    pa.field("warnings", pa.list_(pa.string())),
])
_DECODED = [  # ...then, from the read task to the model actor, for files whose content goes on
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("format", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("xb", pa.large_binary()),  # (3, R, R) float16, R = backbone_res
    pa.field("xq", pa.large_binary()),  # (3, Q, Q) float16, Q = quality_res
]


def digests(hex_ids) -> np.ndarray:
    """Content ids as a sorted array of 32-byte digests (a tenth of a Python set's memory)."""
    return np.sort(np.frombuffer(b"".join(bytes.fromhex(h) for h in hex_ids), dtype="S32"))


def has(sorted_digests: np.ndarray, hex_id: str) -> bool:
    key = np.array(bytes.fromhex(hex_id), dtype="S32")[()]  # as the array holds it
    i = int(np.searchsorted(sorted_digests, key))
    return i < len(sorted_digests) and bool(sorted_digests[i] == key)


def read_files(batch: pa.Table, known: np.ndarray, claims, res: tuple[int, int],
               decode_mode: str = "faithful") -> pa.Table:
    """Read task over runs of files (a row: their indexes into the plan, and their paths)."""
    import ray

    items = [read_item(i, Source(path_from_column(p), p), lambda h: has(known, h), res, decode_mode)
             for indexes, paths in zip(batch.column("indexes").to_pylist(), batch.column("paths").to_pylist())
             for i, p in zip(indexes, paths)]
    decoded = [it for it in items if it.xb is not None]
    if decoded:  # the first copy of a content in this run goes on; a later one is only a path
        firsts = ray.get(claims.claim.remote([(it.index, it.sha256) for it in decoded]))
        for it, first in zip(decoded, firsts):
            if not first:
                it.xb = it.xq = None
    facts = [it.facts if it.xb is not None else None for it in items]
    columns = {
        "index": [it.index for it in items], "path": [it.source.display for it in items],
        "size": [it.size for it in items], "mtime_ns": [it.mtime_ns for it in items],
        "sha256": [it.sha256 for it in items], "error": [it.error for it in items],
        "known": [it.known for it in items], "warnings": [it.warnings for it in items],
        "width": [f and f.width for f in facts], "height": [f and f.height for f in facts],
        "format": [f and f.format for f in facts], "mode": [f and f.mode for f in facts],
        "xb": [it.xb.tobytes() if it.xb is not None else None for it in items],
        "xq": [it.xq.tobytes() if it.xq is not None else None for it in items],
    }
    return pa.Table.from_pydict(columns, schema=pa.schema([*RECORD_SCHEMA, *_DECODED]))


class Claims:
    """The content ids claimed in this run (a Ray actor): the first file to claim one computes it."""

    def __init__(self):
        self.owner: dict[str, int] = {}

    def claim(self, items: list[tuple[int, str]]) -> list[bool]:
        """True for each (file index, content id) that is the content's first copy. A file gets
        the same answer again, so a retried read task computes what it did before."""
        return [self.owner.setdefault(content_id, index) == index for index, content_id in items]


class Experts:
    """Model actor: loads the weights once, then runs the experts on the decoded files of a batch."""

    def __init__(self, weights_dir: str, fingerprint: str, device: str, precision: str,
                 compile_batch: int | None = None):
        import torch

        from faramir.devices import resolve_device, usable_cores
        from faramir.weights import load_model

        dev = resolve_device(device)
        if dev.type == "cpu":  # the node's cores, as a local ingest uses them (Ray would set 1)
            torch.set_num_threads(usable_cores())
        self.model = load_model(weights_dir, dev, precision)
        if self.model.info.experts_fingerprint != fingerprint:
            raise ExpertsMismatch(
                f"{weights_dir} on this Ray node holds other weights than on the driver (experts "
                f"fingerprint {self.model.info.experts_fingerprint[:12]}, driver {fingerprint[:12]}); "
                f"give every node the same weights directory")
        if compile_batch is not None:
            from faramir.compiled import compile_experts

            compile_experts(self.model, compile_batch)
        self.precision = precision

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The batch's records and facts, plus the experts' outputs (float32 bytes) per file run.
        On a GPU two calls run at once (`ray_run.GPU_CALLS`): each stacks its batch into pinned
        memory, whose upload is asynchronous, while the other's batch computes."""
        from faramir.store.ingestion.run import _HostResults

        cfg = self.model.info.config
        pinned = self.model.device.type == "cuda"
        run = [i for i, valid in enumerate(batch.column("xb").is_valid().to_pylist()) if valid]
        outputs = {name: [None] * batch.num_rows for name in EMBEDDING_FIELDS}
        if run:
            xb = _stacked(batch.column("xb").take(run), cfg.backbone_res, pinned)  # (B, 3, R, R)
            xq = _stacked(batch.column("xq").take(run), cfg.quality_res, pinned)  # (B, 3, Q, Q)
            arrays = _HostResults(self.model.features(xb, xq, self.precision)).wait()
            for name, values in arrays.items():
                values = np.ascontiguousarray(values, np.float32)
                for row, i in enumerate(run):
                    outputs[name][i] = values[row].tobytes()
        table = batch.drop_columns(["xb", "xq"])
        for name, values in outputs.items():
            table = table.append_column(pa.field(name, pa.large_binary()), pa.array(values, pa.large_binary()))
        return table


def _stacked(column: pa.ChunkedArray, side: int, pinned: bool = False):
    """(B, 3, side, side) float16 tensor from a column of B arrays' bytes: one copy, as a batch,
    into pinned memory when `pinned` (a GPU's asynchronous upload reads from there)."""
    import torch

    values = column.combine_chunks()  # large_binary: the B arrays back to back
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset:values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].view(np.float16)
    out = torch.empty((len(values), 3, side, side), dtype=torch.float16, pin_memory=pinned)
    np.copyto(out.numpy(), data.reshape(-1, 3, side, side))
    return out


def write_fragments(batch: pa.Table, uri: str, images_schema: pa.Schema, scorers: dict,
                    fingerprint: str, precision: str) -> pa.Table:
    """Fragment task: the new rows of these files, scored by every head, as Lance fragments of
    ``images`` (uncommitted). Rows go in file order, as a local ingest writes them: a head's
    matmul rounds a row's last bit differently with its place in the batch. Returns the files'
    records, flagged when their row is stored, each fragment (pickled, with the file index of
    each of its rows) on one of them."""
    from lance_ray.fragment import write_fragment

    batch = batch.sort_by("index")
    computed = batch.column(EMBEDDING_FIELDS[0]).is_valid()
    records = batch.select(RECORD_SCHEMA.names).append_column(pa.field("stored", pa.bool_()), computed)
    cells: list[bytes | None] = [None] * batch.num_rows
    new = batch.filter(computed)
    if new.num_rows:
        items = [Item(r["index"], Source(path_from_column(r["path"]), r["path"]), r["size"], r["mtime_ns"], r["sha256"],
                      ImageFacts(r["width"], r["height"], r["format"], r["mode"]))
                 for r in new.select(["index", "path", "size", "mtime_ns", "sha256", "width", "height",
                                      "format", "mode"]).to_pylist()]
        arrays = {}
        for name in EMBEDDING_FIELDS:  # (N, dim) float32; aesthetic_score (N,)
            values = np.frombuffer(b"".join(new.column(name).to_pylist()), np.float32)
            arrays[name] = [values if name == "aesthetic_score" else values.reshape(new.num_rows, -1)]
        rows = images_table(images_schema, scorers, [image_row(it, fingerprint, precision) for it in items],
                            arrays, datetime.now(timezone.utc))
        indexes, lo = [it.index for it in items], 0
        for n, (fragment, _) in enumerate(write_fragment([rows], uri, schema=images_schema)):
            cells[n] = pickle.dumps((fragment, indexes[lo:lo + fragment.physical_rows]))
            lo += fragment.physical_rows
    return records.append_column(pa.field("fragment", pa.large_binary()), pa.array(cells, pa.large_binary()))
