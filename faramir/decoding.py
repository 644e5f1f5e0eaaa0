"""Decoding in worker processes: files → hashed, preprocessed items → batches.

Each worker reads, hashes (sha256) and preprocesses a whole batch of files, writing each decoded
image straight into the batch's tensors, which it allocates in shared memory: the model process
receives them without a copy (and, on CUDA, copies them once into pinned memory for an
asynchronous upload). A worker can be told which content hashes are already cached, so a renamed
or copied file is recognised by content and never decoded again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from faramir.devices import usable_cores
from faramir.reading import Batch, Item, check_decode, read_item  # noqa: F401 (Item, read_item: re-exported)
from faramir.sources import Source


class _Decoder(torch.utils.data.Dataset):
    """Index `i` is the `i`-th batch of `indexes` (positions in `sources`), decoded into one Batch."""

    def __init__(self, sources: Sequence[Source], indexes: Sequence[int], batch_size: int,
                 known: Callable[[str], bool] | None, res: tuple[int, int], decode_mode: str):
        self.sources, self.indexes, self.batch_size = sources, indexes, batch_size
        self.known, self.res, self.decode_mode = known, res, decode_mode

    def __len__(self) -> int:
        return -(-len(self.indexes) // self.batch_size)

    def __getitem__(self, batch: int) -> Batch:
        indexes = self.indexes[batch * self.batch_size:(batch + 1) * self.batch_size]
        xb, xq = (_empty((len(indexes), 3, side, side)) for side in self.res)
        arrays_b, arrays_q = xb.numpy(), xq.numpy()
        good: list[Item] = []
        others: list[Item] = []
        for i in indexes:
            row = len(good)  # the next free row; a file that fails leaves it to the next one
            it = read_item(i, self.sources[i], self.known, self.res, self.decode_mode, (arrays_b[row], arrays_q[row]))
            if it.xb is None:
                others.append(it)
            else:
                it.xb = it.xq = None  # the rows of the batch hold them
                good.append(it)
        if not good:
            return Batch([], others, None, None)
        return Batch(good, others, xb[:len(good)], xq[:len(good)])


def _empty(shape: tuple[int, ...]) -> torch.Tensor:
    """A float16 tensor, in shared memory inside a DataLoader worker (which then sends it to the
    model process without copying it), in ordinary memory elsewhere."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float16)
    try:
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 2)  # as the DataLoader's collation does
    except AttributeError:  # a torch without it: shared by a copy when sent instead
        return torch.empty(shape, dtype=torch.float16)
    return torch.empty(0, dtype=torch.float16).set_(storage, 0, shape)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded Pillow work; leave cores to the model


def default_workers(device_type: str = "cpu") -> int:
    """Decode workers: for a GPU, every usable core but one (which drives the device and writes
    the cache); for the CPU, whose experts take seconds an image against milliseconds of decoding,
    one per spare core, at most eight."""
    cores = usable_cores()
    if device_type == "cuda":
        return max(1, cores - 1)
    return max(1, min(cores - 1, 8))


def iter_batches(
    sources: Sequence[Source],
    batch_size: int = 8,
    workers: int | None = None,
    known: Callable[[str], bool] | None = None,
    pin_memory: bool = False,
    res: tuple[int, int] = (384, 512),
    decode_mode: str = "faithful",
    indexes: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Batches in source order, of the `indexes` of `sources` (all by default); an item's `index`
    is its position in `sources`. `workers=0` decodes in this process (for debugging); by default
    `default_workers()`, for a GPU when the batches are to be pinned (`pin_memory`: for CUDA)."""
    check_decode(decode_mode)
    workers = default_workers("cuda" if pin_memory else "cpu") if workers is None else workers
    indexes = range(len(sources)) if indexes is None else indexes
    loader = torch.utils.data.DataLoader(
        _Decoder(sources, indexes, batch_size, known, res, decode_mode),
        batch_size=None,  # each worker makes whole batches
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from loader
