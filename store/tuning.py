"""Finetune a head on the cached vectors of labelled images, and evaluate heads against labels.

Only the head trains (upstream's recipe, in `faramir.finetune`), so the cached pooled vectors
stay valid: a finetune is seconds of CPU, and its scores go back into the cache by `rescore`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from faramir.metrics import DEFAULT_THRESHOLDS, best_threshold, binary_report, per_label_breakdown, threshold_sweep
from store import schema
from store.db import Cache, sql_in
from store.errors import TuningError
from store.labels import labelled_ids
from store.scores import decided, head_prefix

ID_CHUNK = 512  # ids per `id IN (...)` query when gathering labelled rows


def gather(cache: Cache, ids: list[str], columns: list[str]) -> pa.Table:
    """Rows of `images` for these ids (any order), reading only `columns`."""
    parts = [cache.read(schema.IMAGES, ["id", *columns], sql_in("id", ids[i:i + ID_CHUNK]))
             for i in range(0, len(ids), ID_CHUNK)]
    return pa.concat_tables(parts) if parts else cache.read(schema.IMAGES, ["id", *columns], "false")


def _labelled(cache: Cache) -> pa.Table:
    labels = labelled_ids(cache).sort_by("id")
    if len(labels) == 0:
        raise TuningError(f"no labelled cached images in {cache.uri}; import labels first with "
                          f"'faramir labels import FILE.csv' (header: path,label)")
    return labels


def training_data(cache: Cache):
    """(ids, ap, ae, q, targets, labels) of every labelled cached image, in label-id order."""
    from store.scoring import head_inputs

    labels = _labelled(cache)
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
    record = cache.head(base)  # raises with the list of known heads
    source = record.get("source") or ""
    if source and Path(source).is_file():
        try:
            _, _, _, head_fp = load_head_checkpoint(source, cfg)
            if head_fp == record["fingerprint"]:
                return load_pth(source), f"head {base!r} ({source})"
        except Exception:
            pass  # fall back to the copy stored in the cache
    state = head_from_bytes(cache.head_checkpoint(base), cfg).state_dict()
    return {k: v.clone() for k, v in state.items()}, f"head {base!r} (head-only copy in the cache)"


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
) -> FinetuneOutcome:
    """Finetune `base` (a registered head name or a checkpoint file) on the labelled cached images,
    keep the best epoch by validation MCC, write `out` in upstream's key format, and (with `name`)
    score the cache with it. `on_epoch` sees every epoch's report (epoch 0: the base head). An
    existing `out` is refused, before any training, unless `force`."""
    import torch

    from faramir.checkpoints import save_state_dict, split_faramir_checkpoint, trained_state_dict
    from faramir.finetune import Finetuner
    from faramir.head import FaramirHead

    exists = TuningError(f"{out} exists; choose another --out, or pass --force to overwrite it")
    if not force and (Path(out).exists() or Path(out).is_symlink()):
        raise exists
    cache = Cache.open(db)
    _, ap, ae, q, targets, _ = training_data(cache)
    base_state, description = base_checkpoint(cache, base)
    head = FaramirHead(cache.config())
    head.load_state_dict({k: v.float() for k, v in split_faramir_checkpoint(base_state)[1].items()})
    try:
        # Arrow-backed arrays are read-only; the copies are small (labelled rows only).
        tuner = Finetuner(head, torch.tensor(ap), torch.tensor(ae), torch.tensor(q),
                          torch.tensor(np.asarray(targets, bool)), epochs=epochs, lr=lr,
                          batch_size=batch_size, val_fraction=val_fraction, seed=seed)
    except ValueError as ex:
        raise TuningError(str(ex).split("\n")[0]) from ex
    for report in tuner.run():
        if on_epoch is not None:
            on_epoch(report)
    state = trained_state_dict(base_state, head)
    try:
        save_state_dict(state, out, overwrite=force)
    except FileExistsError:  # it appeared while training
        raise exists from None
    if name is not None:
        from store.rescoring import rescore

        rescore(out, name, db=cache)
    return FinetuneOutcome(str(out), description, tuner.result, len(state), name)


@dataclass(frozen=True)
class Evaluation:
    """A head's decisions against the curator labels (`evaluate`); `to_dict` is what is reported."""

    head: str
    threshold: float
    n: int  # labelled cached images
    accepted: int  # of them, predicted accept at the threshold
    accuracy: float
    precision: float
    recall: float
    f1: float
    mcc: float
    confusion: dict[str, int]  # tp, fp, tn, fn ("positive" = accept)
    best: dict  # the sweep entry with the highest MCC
    per_label: list[dict]  # faramir.metrics.per_label_breakdown, by true label
    sweep: list[dict]  # the metrics at thresholds 0.00 … 1.00
    confidence: np.ndarray = dataclasses.field(repr=False)  # per labelled image, by id
    y_true: np.ndarray = dataclasses.field(repr=False)  # its label means accept

    def to_dict(self) -> dict:
        """Every field but the per-image arrays."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("confidence", "y_true")}


def evaluate(head: str = schema.DEFAULT_HEAD, *, db: str | os.PathLike | Cache | None = None,
             threshold: float = 0.5) -> Evaluation:
    """A registered head's scores against the imported labels: the metrics at `threshold`, the
    confusion matrix, a per-label breakdown, a threshold sweep and the MCC-best threshold. Each
    image's decision and label are the query's (`store.scores.decided`)."""
    cache = Cache.open(db)
    prefix = head_prefix(cache, head)
    labels = _labelled(cache)
    cols = [f"{prefix}_confidence", f"{prefix}_accept_label", f"{prefix}_reject_label"]
    rows = gather(cache, labels.column("id").to_pylist(), cols).sort_by("id")
    accepted, predicted = decided(rows, prefix, threshold)
    confidence = rows.column(cols[0]).to_numpy(zero_copy_only=False)
    y_true = labels.column("target").to_numpy(zero_copy_only=False)
    y_pred = accepted.fill_null(False).to_numpy(zero_copy_only=False)
    report = binary_report(y_true, confidence, threshold)
    sweep = threshold_sweep(y_true, confidence, DEFAULT_THRESHOLDS)
    per_label = per_label_breakdown(np.array(labels.column("label").to_pylist(), dtype=object),
                                    y_true, y_pred, predicted.to_numpy(zero_copy_only=False))
    return Evaluation(head=head, **report, best=best_threshold(sweep), per_label=per_label, sweep=sweep,
                      confidence=confidence, y_true=y_true)
