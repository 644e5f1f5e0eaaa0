"""Reading one file: its bytes read once, hashed (sha256, the cache's content id) and, unless its
content is known, decoded into the experts' two inputs. No torch here: an ingest that only meets
content the cache holds already reads and hashes files and never imports it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from faramir.config import DECODE_MODES
from faramir.errors import ImageLoadError, InputError
from faramir.fast_decode import preprocess_fast
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
    xb: np.ndarray | None = None  # (3, 384, 384) float16 (unless written into a batch)
    xq: np.ndarray | None = None  # (3, 512, 512) float16 (unless written into a batch)
    error: str | None = None  # one-line reason when unreadable
    known: bool = False  # content already cached: not decoded
    warnings: list[str] = field(default_factory=list)


@dataclass
class Batch:
    """Decoded items stacked for the model (torch tensors), plus the items that were not decoded."""

    items: list[Item]  # decoded, in order; row i of xb/xq
    others: list[Item]  # unreadable or already known, in order
    xb: object | None  # torch.Tensor (B, 3, 384, 384) float16
    xq: object | None  # torch.Tensor (B, 3, 512, 512) float16

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pin thread (pin_memory=True); without it a Batch stays unpinned."""
        if self.xb is not None:
            self.xb, self.xq = self.xb.pin_memory(), self.xq.pin_memory()
        return self


def check_decode(decode_mode: str) -> str:
    if decode_mode not in DECODE_MODES:
        raise InputError(f"decode {decode_mode!r}: use one of {', '.join(DECODE_MODES)}")
    return decode_mode


def read_item(index: int, source: Source, known: Callable[[str], bool] | None = None, res: tuple[int, int] = (384, 512),
              decode_mode: str = "faithful", out: tuple[np.ndarray, np.ndarray] | None = None) -> Item:
    """Read, hash and (unless its hash is known) preprocess one file, into `out` when given (then
    `xb` and `xq` are those arrays); never raises for bad input."""
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
            item.xb, item.xq, item.facts = decode(data, source.display, *res, out=out,
                                                  preprocessor=preprocess_fast if decode_mode == "fast" else None)
        except ImageLoadError as ex:
            item.error = ex.reason
    item.warnings = list(dict.fromkeys(str(w.message) for w in caught))  # the fast decode may warn twice
    return item


def hash_file(index: int, source: Source) -> Item:
    """Read and hash one file, nothing more: an Item with its size, mtime and content id, or
    without an id when it cannot be read (the run that decodes it says why)."""
    item = Item(index, source)
    try:
        with open_regular(source.path) as f:
            st = os.fstat(f.fileno())
            item.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return item
    item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
    return item
