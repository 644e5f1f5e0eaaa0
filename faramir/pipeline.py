"""Files → decoded batches → experts → head, with decoding in worker processes.

Workers read, hash and preprocess files (the model process never touches image bytes); the
model process stacks their outputs into batches and runs them. A worker can be told which
content hashes are already cached, so a renamed or copied file is recognised by content and
never decoded or run again.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from faramir.config import OUTPUT_NAMES
from faramir.errors import FaramirError, ImageLoadError
from faramir.head import assess_outputs
from faramir.preprocess import ImageFacts, decode


class InputError(FaramirError):
    """A path argument or file list cannot be used."""


def image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclass(frozen=True)
class Source:
    """One file to process: `path` opens it, `display` is how it is reported (upstream's form)."""

    path: str
    display: str


def discover(
    paths: Sequence[str], recursive: bool = False, file_list: str | None = None
) -> list[Source]:
    """Upstream's file enumeration, sorted: a file as given; a directory's image files (its
    subtree with `recursive`); or, with `file_list`, its lines relative to the one directory.
    Hidden files and folders are skipped; files named explicitly are always tried."""
    if file_list is not None:
        if len(paths) > 1:
            raise InputError("--file-list takes at most one PATH: the folder its entries are relative to")
        base = paths[0] if paths else "."
        try:
            with open(file_list, encoding="utf8") as f:
                entries = [line.rstrip("\r\n") for line in f if line.strip()]
        except OSError as ex:
            raise InputError(f"{file_list}: cannot read the file list ({ex.strerror})") from ex
        return [Source(os.path.join(base, e), e) for e in entries]

    exts = image_extensions()
    found: list[Source] = []
    for arg in paths:
        if os.path.isdir(arg):
            if recursive:
                for sub, dirs, files in os.walk(arg):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    for name in sorted(files):
                        if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                            full = os.path.join(sub, name)
                            found.append(Source(full, full))
            else:
                for name in sorted(os.listdir(arg)):
                    full = os.path.join(arg, name)
                    if (not name.startswith(".") and os.path.isfile(full)
                            and os.path.splitext(name)[1].lower() in exts):
                        found.append(Source(full, full))
        elif os.path.exists(arg):
            found.append(Source(arg, arg))
        else:
            raise InputError(f"{arg}: no such file or directory")
    return found


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
        with open(source.path, "rb") as f:
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
    return max(1, min((os.cpu_count() or 2) - 1, 8))


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


@dataclass
class Assessment:
    """One image's result, upstream's fields first."""

    path: str
    accepted: bool
    label: str
    confidence: float  # sigmoid of the decision logit
    logits: list[float]  # the 31 outputs, upstream order (faramir.config.OUTPUT_NAMES)
    aesthetic_score: float
    warnings: list[str] = field(default_factory=list)  # e.g. an ICC profile that was not applied

    def tsv(self) -> str:
        """Upstream inference.py's output line."""
        return f"{self.path}\t{'accept' if self.accepted else 'reject'}\t{self.label}\t{self.confidence:.2f}"


@dataclass
class Failure:
    path: str
    reason: str


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(device)


def assess(
    model,
    sources: Sequence[Source],
    threshold: float = 0.5,
    batch_size: int = 8,
    workers: int | None = None,
    precision: str = "fp32",
) -> Iterator[Assessment | Failure]:
    """Upstream's `inference.py` over `sources`: one Assessment or Failure per source, in order."""
    pin = model.device.type == "cuda"
    for batch in iter_batches(sources, batch_size, workers, pin_memory=pin):
        results: dict[int, Assessment | Failure] = {
            it.index: Failure(it.source.display, it.error or "not decoded") for it in batch.others
        }
        if batch.items:
            feats = model.features(batch.xb, batch.xq, precision)
            outputs = model.score(feats).cpu()
            accepted, label, conf = assess_outputs(outputs, threshold)
            scores = feats.aesthetic_score.float().cpu()
            for row, it in enumerate(batch.items):
                results[it.index] = Assessment(
                    path=it.source.display,
                    accepted=bool(accepted[row]),
                    label=OUTPUT_NAMES[int(label[row])],
                    confidence=float(conf[row]),
                    logits=outputs[row].tolist(),
                    aesthetic_score=float(scores[row]),
                    warnings=it.warnings,
                )
        for index in sorted(results):
            yield results[index]


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); else bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True  # not Linux: let the user judge
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A reason not to use `precision` on `device`, if there is one."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return ("--precision bf16 on a CPU without native bf16 (no AVX512-BF16/AMX) is emulated and "
                "slower than fp32 here; use --precision fp32 on this machine")
    return None
