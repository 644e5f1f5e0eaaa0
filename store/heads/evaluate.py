"""A registered head's decisions against the curator labels: the metrics at a threshold, the
confusion matrix, a per-label breakdown and a threshold sweep (`faramir evaluate`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from faramir.config import DEFAULT_THRESHOLD
from faramir.metrics import DEFAULT_THRESHOLDS, best_threshold, binary_report, per_label_breakdown, threshold_sweep
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.heads.columns import decided, head_columns
from faramir.store.heads.finetune import gather, labelled


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
             threshold: float = DEFAULT_THRESHOLD) -> Evaluation:
    """A registered head's scores against the imported labels: the metrics at `threshold`, the
    confusion matrix, a per-label breakdown, a threshold sweep and the MCC-best threshold. Each
    image's decision and label are the query's (`faramir.store.heads.columns.decided`)."""
    cache = Cache.open(db)
    head_cols = head_columns(cache, head)
    labels = labelled(cache)
    cols = [head_cols.confidence, head_cols.accept_label, head_cols.reject_label]
    rows = gather(cache, labels.column("id").to_pylist(), cols).sort_by("id")
    accepted, predicted = decided(rows, head_cols, threshold)
    confidence = rows.column(cols[0]).to_numpy(zero_copy_only=False)
    y_true = labels.column("target").to_numpy(zero_copy_only=False)
    y_pred = accepted.fill_null(False).to_numpy(zero_copy_only=False)
    report = binary_report(y_true, confidence, threshold)
    sweep = threshold_sweep(y_true, confidence, DEFAULT_THRESHOLDS)
    per_label = per_label_breakdown(np.array(labels.column("label").to_pylist(), dtype=object),
                                    y_true, y_pred, predicted.to_numpy(zero_copy_only=False))
    return Evaluation(head=head, **report, best=best_threshold(sweep), per_label=per_label, sweep=sweep,
                      confidence=confidence, y_true=y_true)
