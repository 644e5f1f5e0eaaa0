"""faramir.metrics against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faramir.metrics import (
    DEFAULT_THRESHOLDS,
    accuracy,
    best_threshold,
    binary_report,
    confusion,
    f1,
    mcc,
    per_label_breakdown,
    precision,
    recall,
    threshold_sweep,
)

# The worked example: 10 items, 4 accept (positive) and 6 reject.
#   item        0    1    2    3    4    5    6    7    8     9
Y_TRUE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
CONF = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.55, 0.05], dtype=np.float32)
# At threshold 0.5 (accept iff conf > 0.5) the predictions are
#   pred        1    1    1    0    1    0    0    0    1     0
# tp = 3 (items 0,1,2), fn = 1 (item 3), fp = 2 (items 4, 8), tn = 4 (items 5,6,7,9)
# precision = 3/5 = 0.6; recall = 3/4 = 0.75; f1 = 2·3 / (2·3 + 2 + 1) = 6/9; accuracy = 7/10
# MCC = (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (12 − 2) / sqrt(5·4·6·5) = 10/√600
Y_PRED_05 = CONF > 0.5


def test_worked_example_at_half():
    assert confusion(Y_TRUE, Y_PRED_05) == (3, 2, 4, 1)
    assert precision(Y_TRUE, Y_PRED_05) == pytest.approx(0.6)
    assert recall(Y_TRUE, Y_PRED_05) == pytest.approx(0.75)
    assert f1(Y_TRUE, Y_PRED_05) == pytest.approx(6 / 9)
    assert accuracy(Y_TRUE, Y_PRED_05) == pytest.approx(0.7)
    assert mcc(Y_TRUE, Y_PRED_05) == pytest.approx(10 / math.sqrt(600))  # 0.408248…

    rep = binary_report(Y_TRUE, CONF, 0.5)
    assert rep["confusion"] == {"tp": 3, "fp": 2, "tn": 4, "fn": 1}
    assert rep["n"] == 10 and rep["accepted"] == 5 and rep["threshold"] == 0.5
    assert rep["mcc"] == pytest.approx(0.4082482905)
    assert rep["f1"] == pytest.approx(2 / 3)


def test_sweep_and_best_threshold_worked_example():
    # threshold  predicted accept (conf > t)        tp fp tn fn   MCC
    # 0.00       all ten                             4  6  0  0   0 (tn+fn = 0)
    # 0.25       0.9 0.8 0.6 0.3 | 0.7 0.4 0.55      4  3  3  0   12/√(7·4·6·3) = 12/√504
    # 0.50       (above)                             3  2  4  1   10/√600
    # 0.65       0.9 0.8 | 0.7                       2  1  5  2   (10 − 2)/√(3·4·6·7) = 8/√504
    # 0.75       0.9 0.8                             2  0  6  2   12/√(2·4·6·8) = 12/√384
    # 1.00       none                                0  0  6  4   0 (tp+fp = 0)
    sweep = threshold_sweep(Y_TRUE, CONF, [0.0, 0.25, 0.5, 0.65, 0.75, 1.0])
    got = [(r["threshold"], *r["confusion"].values()) for r in sweep]
    assert got == [
        (0.0, 4, 6, 0, 0), (0.25, 4, 3, 3, 0), (0.5, 3, 2, 4, 1),
        (0.65, 2, 1, 5, 2), (0.75, 2, 0, 6, 2), (1.0, 0, 0, 6, 4),
    ]
    expected = [0.0, 12 / math.sqrt(504), 10 / math.sqrt(600), 8 / math.sqrt(504), 12 / math.sqrt(384), 0.0]
    assert [r["mcc"] for r in sweep] == pytest.approx(expected)
    best = best_threshold(sweep)
    assert best["threshold"] == 0.75 and best["mcc"] == pytest.approx(0.6123724357)


def test_default_sweep_matches_binary_report_everywhere():
    rng = np.random.RandomState(0)
    y = rng.rand(1000) < 0.3
    c = np.clip(rng.rand(1000) * 0.6 + 0.4 * y, 0, 1).astype(np.float32)
    c[:20] = np.round(c[:20], 2)  # values sitting exactly on grid thresholds
    sweep = threshold_sweep(y, c)
    assert [r["threshold"] for r in sweep] == DEFAULT_THRESHOLDS.tolist()
    assert len(sweep) == 101 and sweep[0]["threshold"] == 0.0 and sweep[-1]["threshold"] == 1.0
    assert sweep[37]["threshold"] == 0.37
    for r in sweep:
        assert r == binary_report(y, c, r["threshold"])


def test_threshold_compares_in_confidence_dtype_like_torch():
    # float32(0.07) is slightly above the double 0.07: torch compares p > 0.07 in float32.
    c = np.array([np.float32(0.07), np.float32(0.5), np.float32(0.2)], dtype=np.float32)
    y = np.array([True, True, False])
    torch_says = (torch.from_numpy(c) > 0.07).numpy()
    assert torch_says.tolist() == [False, True, True]
    assert binary_report(y, c, 0.07)["confusion"] == {"tp": 1, "fp": 1, "tn": 0, "fn": 1}
    assert threshold_sweep(y, c, [0.07])[0]["confusion"] == binary_report(y, c, 0.07)["confusion"]


def test_best_threshold_ties_go_closest_to_half():
    sweep = [
        {"threshold": 0.2, "mcc": 0.5},
        {"threshold": 0.3, "mcc": 0.7},
        {"threshold": 0.6, "mcc": 0.7},  # |0.6 − 0.5| < |0.3 − 0.5|
        {"threshold": 0.9, "mcc": 0.7},
    ]
    assert best_threshold(sweep)["threshold"] == 0.6
    assert best_threshold([{"threshold": 0.4, "mcc": 0.1}, {"threshold": 0.6, "mcc": 0.1}])["threshold"] == 0.4
    with pytest.raises(ValueError):
        best_threshold([])


def test_zero_over_zero_cases():
    empty = np.zeros(0, dtype=bool)
    assert confusion(empty, empty) == (0, 0, 0, 0)
    assert (precision(empty, empty), recall(empty, empty), f1(empty, empty),
            accuracy(empty, empty), mcc(empty, empty)) == (0.0, 0.0, 0.0, 0.0, 0.0)

    # all reject, all predicted reject: perfect accuracy, but nothing positive anywhere
    neg = np.zeros(5, dtype=bool)
    assert confusion(neg, neg) == (0, 0, 5, 0)
    assert accuracy(neg, neg) == 1.0
    assert precision(neg, neg) == 0.0 and recall(neg, neg) == 0.0 and f1(neg, neg) == 0.0
    assert mcc(neg, neg) == 0.0

    # everything predicted accept on a mixed set: tn + fn = 0 → MCC 0; precision = base rate
    y = np.array([1, 0, 0, 1], dtype=bool)
    allpos = np.ones(4, dtype=bool)
    assert mcc(y, allpos) == 0.0 and precision(y, allpos) == 0.5 and recall(y, allpos) == 1.0
    # nothing predicted accept: precision 0 (not NaN)
    assert precision(y, ~allpos) == 0.0 and f1(y, ~allpos) == 0.0

    # perfect and perfectly wrong
    assert mcc(y, y) == 1.0 and mcc(y, ~y) == -1.0

    sweep = threshold_sweep(empty, np.zeros(0, dtype=np.float32))
    assert all(r["mcc"] == 0.0 and r["n"] == 0 for r in sweep)


def test_input_checks():
    with pytest.raises(TypeError, match="boolean"):
        confusion(np.array([0.0, 1.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="length"):
        confusion(np.array([True]), np.array([True, False]))
    with pytest.raises(TypeError, match="floating"):
        binary_report(np.array([True]), np.array([1]), 0.5)
    assert confusion(np.array([1, 0, 1]), np.array([1, 1, 0])) == (1, 1, 0, 1)  # 0/1 ints are fine


def test_the_sweep_over_a_million_rows_equals_a_report_at_each_threshold():
    rng = np.random.RandomState(1)
    y = rng.rand(1_000_000) < 0.4
    c = rng.rand(1_000_000).astype(np.float32)
    sweep = threshold_sweep(y, c)
    for i in (0, 17, 50, 99, 100):
        assert sweep[i] == binary_report(y, c, sweep[i]["threshold"])


def test_per_label_breakdown():
    true = ["3d_realism", "text", "3d_realism", "2d_sketch", "text", "text", "reject"]
    y_true = np.array([True, False, True, False, False, False, False])
    y_pred = np.array([True, True, False, False, False, False, True])
    pred = ["3d_realism", "2d_anime", "2d_bad", "2d_sketch", "text", "ui", "3d_human"]
    rows = per_label_breakdown(np.array(true), y_true, y_pred, np.array(pred))
    # upstream order (3d_realism = 0, 2d_sketch = 9, text = 25), then other names
    assert [r["label"] for r in rows] == ["3d_realism", "2d_sketch", "text", "reject"]
    realism, sketch, text, reject = rows
    assert realism == {
        "label": "3d_realism", "accept_biased": True, "count": 2,
        "accepted": 1, "accepted_rate": 0.5, "agree": 1, "agree_rate": 0.5,
        "label_match": 1, "label_match_rate": 0.5,
        "top_predicted": "3d_realism",  # tie 1–1 with 2d_bad → upstream order
        "top_predicted_rate": 0.5,
    }
    assert sketch["accept_biased"] is False and sketch["agree"] == 1 and sketch["label_match"] == 1
    # text: 3 rows, one predicted accept (2d_anime), two rejected (text, ui)
    assert (text["count"], text["accepted"], text["agree"], text["label_match"]) == (3, 1, 2, 1)
    assert text["accepted_rate"] == pytest.approx(1 / 3) and text["agree_rate"] == pytest.approx(2 / 3)
    assert reject["accept_biased"] is None and reject["agree"] == 0

    plain = per_label_breakdown(true, y_true, y_pred)
    assert "top_predicted" not in plain[0] and plain[0]["count"] == 2
