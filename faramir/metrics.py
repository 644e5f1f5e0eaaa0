"""Binary accept/reject metrics over numpy arrays (no torch, no printing).

Conventions, used everywhere here:

- "Positive" means accept. `y_true`/`y_pred` are boolean arrays (integer 0/1 arrays are accepted).
- A row is predicted positive iff `confidence > threshold` (strictly), as upstream's
  `assess` does. The threshold is cast to the confidence's floating dtype before comparing, as
  torch does for `p > t` on a float32 tensor, so results here match `faramir.head.assess_outputs`
  row for row even at thresholds that float32 cannot represent exactly.
- 0/0 cases are defined as 0.0 rather than NaN, so every number is comparable and JSON-safe:
  * precision = tp / (tp + fp), 0 when nothing is predicted positive;
  * recall = tp / (tp + fn), 0 when there are no positives;
  * f1 = 2tp / (2tp + fp + fn), 0 when there are neither positives nor positive predictions;
  * accuracy = (tp + tn) / n, 0 when n = 0;
  * MCC = (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)), 0 when any of the four marginals
    is zero (all predictions one class, or all truths one class): such a classifier carries no
    information about the truth, and 0 is what MCC tends to at that limit for a balanced set.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from faramir.config import ACCEPT_LABELS, DEFAULT_THRESHOLD, OUTPUT_NAMES

__all__ = [
    "DEFAULT_THRESHOLDS", "accuracy", "best_threshold", "binary_report", "confusion", "f1", "mcc",
    "per_label_breakdown", "precision", "recall", "threshold_sweep",
]

DEFAULT_THRESHOLDS: np.ndarray = np.round(np.linspace(0.0, 1.0, 101), 2)  # 0.00, 0.01, …, 1.00


def _as_bool(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.bool_:
        return a.reshape(-1) if a.ndim != 1 else a
    if np.issubdtype(a.dtype, np.integer) and (a.size == 0 or (a.min() >= 0 and a.max() <= 1)):
        return a.astype(np.bool_).reshape(-1)
    raise TypeError(f"{name} must be a boolean array (or integer 0/1), got dtype {a.dtype}")


def _as_confidence(x) -> np.ndarray:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"confidence must be a floating array, got dtype {a.dtype}")
    return a.reshape(-1)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise ValueError(f"arrays differ in length: {shown}")
    return next(iter(lengths.values()))


def confusion(y_true, y_pred) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) as Python ints."""
    t = _as_bool("y_true", y_true)
    p = _as_bool("y_pred", y_pred)
    n = _same_length(y_true=t, y_pred=p)
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return tp, fp, n - tp - fp - fn, fn


# Scalar metrics from counts (Python ints: exact, no overflow on any row count).

def _precision(tp: int, fp: int) -> float:
    return tp / (tp + fp) if tp + fp else 0.0


def _recall(tp: int, fn: int) -> float:
    return tp / (tp + fn) if tp + fn else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _accuracy(tp: int, fp: int, tn: int, fn: int) -> float:
    n = tp + fp + tn + fn
    return (tp + tn) / n if n else 0.0


def _mcc(tp: int, fp: int, tn: int, fn: int) -> float:
    marginals = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    if marginals == 0:
        return 0.0
    return (tp * tn - fp * fn) / math.sqrt(marginals)


def precision(y_true, y_pred) -> float:
    tp, fp, _, _ = confusion(y_true, y_pred)
    return _precision(tp, fp)


def recall(y_true, y_pred) -> float:
    tp, _, _, fn = confusion(y_true, y_pred)
    return _recall(tp, fn)


def f1(y_true, y_pred) -> float:
    tp, fp, _, fn = confusion(y_true, y_pred)
    return _f1(tp, fp, fn)


def accuracy(y_true, y_pred) -> float:
    return _accuracy(*confusion(y_true, y_pred))


def mcc(y_true, y_pred) -> float:
    """Matthews correlation coefficient in [-1, 1]; 0 when any confusion marginal is zero."""
    return _mcc(*confusion(y_true, y_pred))


def _report(threshold: float, tp: int, fp: int, tn: int, fn: int) -> dict:
    return {
        "threshold": float(threshold),
        "n": tp + fp + tn + fn,
        "accepted": tp + fp,  # predicted positive
        "accuracy": _accuracy(tp, fp, tn, fn),
        "precision": _precision(tp, fp),
        "recall": _recall(tp, fn),
        "f1": _f1(tp, fp, fn),
        "mcc": _mcc(tp, fp, tn, fn),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def _threshold_in(conf: np.ndarray, threshold) -> np.ndarray:
    return np.asarray(threshold, dtype=conf.dtype)


def binary_report(y_true, confidence, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """All metrics at one threshold (accept iff confidence > threshold).

    Keys: threshold, n, accepted (predicted positive count), accuracy, precision, recall, f1,
    mcc, confusion {"tp", "fp", "tn", "fn"}.
    """
    t = _as_bool("y_true", y_true)
    c = _as_confidence(confidence)
    _same_length(y_true=t, confidence=c)
    return _report(threshold, *confusion(t, c > _threshold_in(c, threshold)))


def threshold_sweep(y_true, confidence, thresholds: Sequence[float] | np.ndarray | None = None) -> list[dict]:
    """`binary_report` at every threshold (default 0.00 … 1.00 in steps of 0.01), in the given order.

    Vectorised: one sort of each class's confidences, then a binary search per threshold, so a
    million rows and a hundred thresholds take well under a second.
    """
    t = _as_bool("y_true", y_true)
    c = _as_confidence(confidence)
    _same_length(y_true=t, confidence=c)
    ths = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if np.isnan(ths).any():
        raise ValueError("thresholds must not be NaN")
    cmp = _threshold_in(c, ths)
    pos = np.sort(c[t])
    neg = np.sort(c[~t])
    # count of values > threshold = len - (count of values <= threshold)
    tps = len(pos) - np.searchsorted(pos, cmp, side="right")
    fps = len(neg) - np.searchsorted(neg, cmp, side="right")
    out = []
    for th, tp, fp in zip(ths.tolist(), tps.tolist(), fps.tolist()):
        out.append(_report(th, tp, fp, len(neg) - fp, len(pos) - tp))
    return out


def best_threshold(sweep: Sequence[dict]) -> dict:
    """The sweep entry with the highest MCC; ties go to the threshold closest to the default (then the lower)."""
    if not sweep:
        raise ValueError("empty sweep: no thresholds to choose from")
    return min(sweep, key=lambda r: (-r["mcc"], abs(r["threshold"] - DEFAULT_THRESHOLD), r["threshold"]))


def _label_rank(order: dict[str, int], name: str):
    """Upstream's names in upstream order, then other names alphabetically."""
    return (0, order[name], "") if name in order else (1, 0, name)


def per_label_breakdown(true_labels, y_true, y_pred, predicted_labels=None) -> list[dict]:
    """How the decision fares on each true label.

    `true_labels` are label names (the 30 upstream names, or anything else such as plain
    "accept"/"reject"), `y_true` the accept targets, `y_pred` the predicted decisions and
    `predicted_labels` (optional) the predicted label names, all of one length.

    One dict per true label present, the 30 upstream names first in upstream order, then other
    names alphabetically. Keys: label, accept_biased (True/False for an upstream name, None
    otherwise), count, accepted (rows predicted accept), accepted_rate, agree (rows whose
    predicted decision equals the target), agree_rate; with predicted_labels also label_match
    (rows whose predicted label equals the true one), label_match_rate, top_predicted (the most
    frequent predicted label; ties → upstream order, then alphabetical) and top_predicted_rate.
    """
    names = np.asarray(true_labels).astype(str).reshape(-1)
    t = _as_bool("y_true", y_true)
    p = _as_bool("y_pred", y_pred)
    arrays = {"true_labels": names, "y_true": t, "y_pred": p}
    pred_names = None
    if predicted_labels is not None:
        pred_names = np.asarray(predicted_labels).astype(str).reshape(-1)
        arrays["predicted_labels"] = pred_names
    _same_length(**arrays)

    order = {name: i for i, name in enumerate(OUTPUT_NAMES)}
    rank = functools.partial(_label_rank, order)
    uniq, inverse = np.unique(names, return_inverse=True)
    k = len(uniq)
    count = np.bincount(inverse, minlength=k)
    accepted = np.bincount(inverse, weights=p, minlength=k).astype(np.int64)
    agree = np.bincount(inverse, weights=(p == t), minlength=k).astype(np.int64)
    if pred_names is not None:
        match = np.bincount(inverse, weights=(pred_names == names), minlength=k).astype(np.int64)

    rows = []
    for i in sorted(range(k), key=lambda j: rank(str(uniq[j]))):
        label = str(uniq[i])
        n = int(count[i])
        row = {
            "label": label,
            "accept_biased": (label in ACCEPT_LABELS) if label in order and order[label] < 30 else None,
            "count": n,
            "accepted": int(accepted[i]),
            "accepted_rate": int(accepted[i]) / n,
            "agree": int(agree[i]),
            "agree_rate": int(agree[i]) / n,
        }
        if pred_names is not None:
            preds, pc = np.unique(pred_names[inverse == i], return_counts=True)
            best = min(range(len(preds)), key=lambda j: (-int(pc[j]), rank(str(preds[j]))))
            row.update({
                "label_match": int(match[i]),
                "label_match_rate": int(match[i]) / n,
                "top_predicted": str(preds[best]),
                "top_predicted_rate": int(pc[best]) / n,
            })
        rows.append(row)
    return rows
