"""Decoding in worker processes: files → hashed, preprocessed items → stacked batches.

Workers read, hash (sha256) and preprocess files; the model process never touches image bytes, it
stacks the workers' outputs into batches. A worker can be told which content hashes are already
cached, so a renamed or copied file is recognised by content and never decoded again.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from faramir.devices import usable_cores
from faramir.errors import ImageLoadError
from faramir.files import open_regular
from faramir.preprocess import ImageFacts, decode
from faramir.sources import Source


@dataclass
class Item:
    """What a worker returns for one source: arrays when decoded, else why not."""

    index: int
    source: Source
    size: int = 0
    mtime_ns: int = 0
    sha256: str | None = None
    facts: ImageFacts | None = None
    xb: np.ndarray | None = None  # (3, 384, 384) float16
    xq: np.ndarray | None = None  # (3, 512, 512) float16
    error: str | None = None  # one-line reason when unreadable
    known: bool = False  # content already cached: not decoded
    warnings: list[str] = field(default_factory=list)


class _Decoder(torch.utils.data.Dataset):
    def __init__(self, sources: Sequence[Source], known: Callable[[str], bool] | None, res: tuple[int, int]):
        self.sources = sources
        self.known = known
        self.res = res

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Item:
        return read_item(index, self.sources[index], self.known, self.res)


def read_item(index: int, source: Source, known=None, res: tuple[int, int] = (384, 512)) -> Item:
    """Read, hash and (unless its hash is known) preprocess one file; never raises for bad input."""
    item = Item(index, source)
    try:
        with open_regular(source.path) as f:  # a FIFO or socket is refused, never waited on
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as ex:
        item.error = ImageLoadError.from_exception(source.display, ex).reason
        return item
    item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
    item.sha256 = hashlib.sha256(data).hexdigest()
    if known is not None and known(item.sha256):
        item.known = True
        return item
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            item.xb, item.xq, item.facts = decode(data, source.display, *res)
        except ImageLoadError as ex:
            item.error = ex.reason
    item.warnings = [str(w.message) for w in caught]
    return item


@dataclass
class Batch:
    """Decoded items stacked for the model, plus the items that were not decoded."""

    items: list[Item]  # decoded, in order; row i of xb/xq
    others: list[Item]  # unreadable or already known, in order
    xb: torch.Tensor | None  # (B, 3, 384, 384) float16
    xq: torch.Tensor | None  # (B, 3, 512, 512) float16

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pin thread (pin_memory=True); without it a Batch stays unpinned."""
        if self.xb is not None:
            self.xb, self.xq = self.xb.pin_memory(), self.xq.pin_memory()
        return self


def _collate(items: list[Item]) -> Batch:
    good = [it for it in items if it.xb is not None]
    others = [it for it in items if it.xb is None]
    xb = xq = None
    if good:
        xb = torch.from_numpy(np.stack([it.xb for it in good]))
        xq = torch.from_numpy(np.stack([it.xq for it in good]))
        for it in good:  # the stacked copy is what travels on; drop the per-item arrays
            it.xb = it.xq = None
    return Batch(good, others, xb, xq)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded Pillow work; leave cores to the model


def default_workers() -> int:
    """One decode worker per spare core, at least one, at most eight."""
    return max(1, min(usable_cores() - 1, 8))


def iter_batches(
    sources: Sequence[Source],
    batch_size: int = 8,
    workers: int | None = None,
    known: Callable[[str], bool] | None = None,
    pin_memory: bool = False,
    res: tuple[int, int] = (384, 512),
) -> Iterator[Batch]:
    """Batches in source order. `workers=0` decodes in this process (for debugging)."""
    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _Decoder(sources, known, res),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from loader
