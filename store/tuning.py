"""Finetune a head on the cached vectors of labelled images, and evaluate heads against labels.

Only the head trains (upstream's recipe, in `faramir.finetune`), so the cached pooled vectors
stay valid: a finetune is seconds of CPU, and its scores go back into the cache by `rescore`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from faramir.finetune import EpochReport, Finetuner, save_state_dict, trained_state_dict
from faramir.head import FaramirHead
from faramir.metrics import (
    DEFAULT_THRESHOLDS, best_threshold, binary_report, per_label_breakdown, threshold_sweep,
)
from faramir.weights import head_from_bytes, load_head_checkpoint, load_pth, split_faramir_checkpoint
from store import schema
from store.db import Cache, CacheError, read_columns
from store.labels import labelled_ids
from store.scoring import vectors

ID_CHUNK = 512  # ids per `id IN (...)` query when gathering labelled rows


class TuningError(CacheError):
    """A finetune or evaluation cannot run as asked."""


def _open(db) -> Cache:
    return db if isinstance(db, Cache) else Cache.open(db)


def _sql_ids(ids: list[str]) -> str:
    return "id IN (" + ", ".join(f"'{i}'" for i in ids) + ")"


def gather(cache: Cache, ids: list[str], columns: list[str]) -> pa.Table:
    """Rows of `images` for these ids (any order), reading only `columns`."""
    table = cache.images()
    parts = [read_columns(table, ["id", *columns], _sql_ids(ids[i:i + ID_CHUNK]))
             for i in range(0, len(ids), ID_CHUNK)]
    return pa.concat_tables(parts) if parts else read_columns(table, ["id", *columns], "false")


def training_data(cache: Cache):
    """(ids, ap, ae, q, targets, labels) of every labelled cached image, in label-id order."""
    labels = labelled_ids(cache).sort_by("id")
    if len(labels) == 0:
        raise TuningError(f"no labelled cached images in {cache.uri}; import labels first with "
                          f"'faramir labels import FILE.csv' (header: path,label)")
    cfg = cache.config()
    rows = gather(cache, labels.column("id").to_pylist(),
                  ["faramir_embedding", "aesthetic_features", "quality_features"]).sort_by("id")
    assert rows.column("id").equals(labels.column("id")), "every labelled id is cached"
    return (
        labels.column("id").to_pylist(),
        vectors(rows.column("faramir_embedding"), cfg.backbone_dim),
        vectors(rows.column("aesthetic_features"), cfg.aesthetic_dim),
        vectors(rows.column("quality_features"), cfg.quality_dim),
        labels.column("target").to_numpy(zero_copy_only=False),
        labels.column("label").to_pylist(),
    )


def base_checkpoint(cache: Cache, base: str) -> tuple[dict[str, torch.Tensor], str]:
    """(base state dict, description): a checkpoint file, or a head registered in the cache.

    A registered head whose source file is still on disk with the same head weights gives the
    full file (so the output is a drop-in `faramir-v1.pth`); otherwise its stored head-only copy."""
    cfg = cache.config()
    if Path(base).is_file():
        state = load_pth(base)
        load_head_checkpoint(base, cfg)  # strict key/shape check
        return state, f"file {base}"
    record = cache.head(base)  # raises with the list of known heads
    source = record.get("source") or ""
    if source and Path(source).is_file():
        try:
            _, _, pool_fp, head_fp = load_head_checkpoint(source, cfg)
            if head_fp == record["fingerprint"]:
                return load_pth(source), f"head {base!r} ({source})"
        except Exception:
            pass  # fall back to the copy stored in the cache
    row = read_columns(cache.table(schema.HEADS), ["name", "checkpoint"],
                       f"name = '{base}'").to_pylist()[0]
    state = head_from_bytes(row["checkpoint"], cfg).state_dict()
    return {k: v.clone() for k, v in state.items()}, f"head {base!r} (head-only copy in the cache)"


@dataclass
class FinetuneOutcome:
    out: str
    base: str
    result: object  # faramir.finetune.FinetuneResult
    keys: int
    scored_as: str | None


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
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> FinetuneOutcome:
    """Finetune `base` (a registered head name or a checkpoint file) on the labelled cached images,
    keep the best epoch by validation MCC, write `out` in upstream's key format, and (with `name`)
    score the cache with it. `on_epoch` sees every epoch's report (epoch 0: the base head)."""
    cache = _open(db)
    cfg = cache.config()
    _, ap, ae, q, targets, _ = training_data(cache)
    base_state, description = base_checkpoint(cache, base)
    _, head_state = split_faramir_checkpoint(base_state)
    head = FaramirHead(cfg)
    head.load_state_dict({k: v.float() for k, v in head_state.items()})
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
    save_state_dict(state, out)
    scored_as = None
    if name is not None:
        from store.heads import rescore

        rescore(out, name, db=cache)
        scored_as = name
    return FinetuneOutcome(str(out), description, tuner.result, len(state), scored_as)


def evaluate(head: str = schema.DEFAULT_HEAD, *, db: str | os.PathLike | Cache | None = None,
             threshold: float = 0.5) -> dict:
    """A registered head's scores against the imported labels: the metrics at `threshold`, the
    confusion matrix, a per-label breakdown, a threshold sweep and the MCC-best threshold."""
    from store.query import head_prefix

    cache = _open(db)
    prefix = head_prefix(cache, head)
    labels = labelled_ids(cache).sort_by("id")
    if len(labels) == 0:
        raise TuningError(f"no labelled cached images in {cache.uri}; import labels first with "
                          f"'faramir labels import FILE.csv' (header: path,label)")
    cols = [f"{prefix}_confidence", f"{prefix}_accept_label", f"{prefix}_reject_label"]
    rows = gather(cache, labels.column("id").to_pylist(), cols).sort_by("id")
    confidence = rows.column(cols[0]).to_numpy(zero_copy_only=False)
    y_true = labels.column("target").to_numpy(zero_copy_only=False)
    report = binary_report(y_true, confidence, threshold)
    y_pred = confidence > np.float32(threshold)
    predicted = np.where(y_pred, rows.column(cols[1]).to_numpy(zero_copy_only=False),
                         rows.column(cols[2]).to_numpy(zero_copy_only=False))
    sweep = threshold_sweep(y_true, confidence, DEFAULT_THRESHOLDS)
    return {
        "head": head,
        **report,
        "best": best_threshold(sweep),
        "per_label": per_label_breakdown(np.array(labels.column("label").to_pylist(), dtype=object),
                                         y_true, y_pred, predicted),
        "sweep": sweep,
        "_confidence": confidence,
        "_y_true": y_true,
    }


def plot_evaluation(result: dict, path: str | os.PathLike) -> Path:
    """Precision and recall against threshold, and confidence histograms of labelled accept vs reject."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as ex:
        raise TuningError("--plot needs matplotlib: pip install 'faramir[plot]'") from ex
    sweep = result["sweep"]
    t = [s["threshold"] for s in sweep]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(t, [s["precision"] for s in sweep], label="precision")
    left.plot(t, [s["recall"] for s in sweep], label="recall")
    left.plot(t, [s["mcc"] for s in sweep], label="MCC", linestyle="--")
    left.axvline(result["best"]["threshold"], color="grey", linewidth=0.8)
    left.set(xlabel="threshold", title=f"head {result['head']}", ylim=(-0.05, 1.05))
    left.legend()
    conf, y = result["_confidence"], result["_y_true"]
    bins = np.linspace(0, 1, 41)
    right.hist(conf[y], bins=bins, alpha=0.6, label="labelled accept")
    right.hist(conf[~y], bins=bins, alpha=0.6, label="labelled reject")
    right.axvline(result["threshold"], color="black", linewidth=0.8)
    right.set(xlabel="confidence", ylabel="images", title="confidence by label")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
