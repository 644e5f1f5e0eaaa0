"""Finetune a head on the cached vectors of labelled images (`faramir finetune`).

Only the head's decision layers train (upstream's recipe, in `faramir.finetune`), so the cached
pooled vectors stay valid: a finetune is seconds of CPU, and its scores go back into the cache by
`rescore`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from faramir.store import limits, schema
from faramir.store.cache import Cache
from faramir.store.errors import TuningError
from faramir.store.heads import registry
from faramir.store.labels.table import labelled_ids
from faramir.store.sql import id_filters


def gather(cache: Cache, ids: list[str], columns: list[str]) -> pa.Table:
    """Rows of `images` for these ids (any order), reading only `columns`."""
    return pa.concat_tables([cache.read(schema.IMAGES, ["id", *columns], where) for where in id_filters(ids)])


def labelled(cache: Cache) -> pa.Table:
    labels = labelled_ids(cache).sort_by("id")
    if len(labels) == 0:
        raise TuningError(f"no labelled cached images in {cache.uri}; import labels first with "
                          f"'faramir labels import FILE.csv' (header: path,label)")
    return labels


def training_data(cache: Cache):
    """(ids, ap, ae, q, targets, labels) of every labelled cached image, in label-id order."""
    from faramir.store.heads.scoring import head_inputs

    labels = labelled(cache)
    rows = gather(cache, labels.column("id").to_pylist(), schema.HEAD_INPUTS).sort_by("id")
    assert rows.column("id").equals(labels.column("id")), "every labelled id is cached"
    return (
        labels.column("id").to_pylist(),
        *head_inputs(rows, cache.config()),
        labels.column("target").to_numpy(zero_copy_only=False),
        labels.column("label").to_pylist(),
    )


def base_checkpoint(cache: Cache, base: str) -> tuple[dict, str]:
    """(base state dict, description): a checkpoint file, or a head registered in the cache.

    A registered head whose source file is still on disk with the same head weights gives the
    full file (so the output is a drop-in `faramir-v1.pth`); otherwise its stored head-only copy."""
    from faramir.checkpoints import head_from_bytes, load_head_checkpoint, load_pth

    cfg = cache.config()
    if Path(base).is_file():
        state = load_pth(base)
        load_head_checkpoint(base, cfg)  # strict key/shape check
        return state, f"file {base}"
    record = registry.head(cache, base)  # raises with the list of known heads
    source = record.get("source") or ""
    if source and Path(source).is_file():
        try:
            _, _, _, head_fp = load_head_checkpoint(source, cfg)
            if head_fp == record["fingerprint"]:
                return load_pth(source), f"head {base!r} ({source})"
        except Exception:
            pass  # fall back to the copy stored in the cache
    state = head_from_bytes(registry.checkpoint(cache, base), cfg).state_dict()
    return {k: v.clone() for k, v in state.items()}, f"head {base!r} (head-only copy in the cache)"


def _tuner(cache: Cache, base_state: dict, **options):
    """(the base's head, a `faramir.finetune.Finetuner` of it over the labelled cached rows)."""
    import torch

    from faramir.checkpoints import split_faramir_checkpoint
    from faramir.finetune import Finetuner
    from faramir.head import FaramirHead

    _, ap, ae, q, targets, _ = training_data(cache)
    head = FaramirHead(cache.config())
    head.load_state_dict({k: v.float() for k, v in split_faramir_checkpoint(base_state)[1].items()})
    try:
        # Arrow-backed arrays are read-only; the copies are small (labelled rows only).
        return head, Finetuner(head, torch.tensor(ap), torch.tensor(ae), torch.tensor(q),
                               torch.tensor(np.asarray(targets, bool)), **options)
    except ValueError as ex:
        raise TuningError(str(ex).split("\n")[0]) from ex


@dataclass
class FinetuneOutcome:
    """What `finetune` wrote: the checkpoint `out`, made from `base`, and the training's result."""

    out: str
    base: str  # a description of the base checkpoint
    result: object  # faramir.finetune.FinetuneResult
    keys: int  # tensors in the checkpoint written
    scored_as: str | None  # the head name the cache was scored under, if any


def finetune(
    base: str,
    out: str | os.PathLike,
    *,
    db: str | os.PathLike | Cache | None = None,
    name: str | None = None,
    epochs: int = 20,
    lr: float = 4e-4,
    batch_size: int = 256,
    val_fraction: float = 0.2,
    seed: int = 0,
    on_epoch: Callable | None = None,
    force: bool = False,
    threads: int | None = None,
) -> FinetuneOutcome:
    """Finetune `base` (a registered head name or a checkpoint file) on the labelled cached images,
    keep the best epoch by validation MCC, write `out` in upstream's key format, and (with `name`)
    score the cache with it. `on_epoch` sees every epoch's report (epoch 0: the base head). An
    existing `out` is refused, before any training, unless `force`. `threads`: torch's threads
    while training (None: as they are; 1 is fastest for this small head)."""
    from faramir.checkpoints import save_state_dict, trained_state_dict
    from faramir.devices import torch_threads

    for what, value, low, high in (("epochs", epochs, 1, limits.MAX_EPOCHS), ("lr", lr, 0.0, limits.MAX_LEARNING_RATE),
                                   ("batch size", batch_size, 1, limits.MAX_HEAD_BATCH), ("seed", seed, 0, limits.MAX_SEED),
                                   ("threads", threads if threads is not None else 1, 1, limits.MAX_THREADS)):
        limits.check(what, value, low, high, TuningError)
    exists = TuningError(f"{out} exists; choose another --out, or pass --force to overwrite it")
    if not force and (Path(out).exists() or Path(out).is_symlink()):
        raise exists
    cache = Cache.open(db)
    if name is not None:
        cache.check_writable()  # before the training, not after it
    base_state, description = base_checkpoint(cache, base)
    head, tuner = _tuner(cache, base_state, epochs=epochs, lr=lr, batch_size=batch_size,
                         val_fraction=val_fraction, seed=seed)
    with torch_threads(threads):
        for report in tuner.run():
            if on_epoch is not None:
                on_epoch(report)
    state = trained_state_dict(base_state, head)
    try:
        save_state_dict(state, out, overwrite=force)
    except FileExistsError:  # it appeared while training
        raise exists from None
    if name is not None:
        from faramir.store.heads.rescore import rescore

        rescore(out, name, db=cache)
    return FinetuneOutcome(str(out), description, tuner.result, len(state), name)


