"""Figures for `faramir stats --plot` and `faramir evaluate --plot` (matplotlib, an optional extra).

A figure is written beside its destination and moved into place in one step; the stats figure is
linked, so an existing file is never overwritten, even one that appeared meanwhile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faramir.cli.common import fail
from faramir.files import atomic_path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install 'faramir[plot]'")
    return plt


def refuse_existing(path: Path | None) -> None:
    if path is not None and path.exists():
        fail(f"{path} exists; choose another name or remove it first")


def _save(fig, plt, path: Path, overwrite: bool = False) -> None:
    try:
        with atomic_path(path, overwrite=overwrite, suffix=path.suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=110)
    except FileExistsError:
        fail(f"{path} exists; choose another name or remove it first")
    finally:
        plt.close(fig)


def plot_stats(stats, path: Path) -> None:
    """The confidence histogram and the threshold sweep of a `faramir.store.queries.counting.Stats`."""
    plt = _pyplot()
    edges, counts = stats.histogram["edges"], stats.histogram["counts"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
             color="#4c72b0", edgecolor="white")
    left.axvline(stats.threshold, color="#c44e52", linestyle="--", label=f"T = {stats.threshold}")
    left.set(title=f"confidence ({stats.head}, {stats.total} images)", xlabel="confidence",
             ylabel="images", xlim=(0, 1))
    left.legend()
    right.plot([r["threshold"] for r in stats.sweep], [r["accepted"] for r in stats.sweep], marker="o",
               color="#4c72b0")
    right.axvline(stats.threshold, color="#c44e52", linestyle="--")
    right.set(title="threshold sweep", xlabel="threshold T", ylabel="accepted (confidence > T)", xlim=(0, 1))
    fig.tight_layout()
    _save(fig, plt, path)  # never overwrites


def plot_evaluation(result, path: Path) -> None:
    """Precision, recall and MCC against threshold, and confidence histograms of labelled accept
    vs reject, of a `faramir.store.heads.evaluate.Evaluation`."""
    plt = _pyplot()
    t = [s["threshold"] for s in result.sweep]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(t, [s["precision"] for s in result.sweep], label="precision")
    left.plot(t, [s["recall"] for s in result.sweep], label="recall")
    left.plot(t, [s["mcc"] for s in result.sweep], label="MCC", linestyle="--")
    left.axvline(result.best["threshold"], color="grey", linewidth=0.8)
    left.set(xlabel="threshold", title=f"head {result.head}", ylim=(-0.05, 1.05))
    left.legend()
    conf, y = result.confidence, result.y_true
    bins = np.linspace(0, 1, 41)
    right.hist(conf[y], bins=bins, alpha=0.6, label="labelled accept")
    right.hist(conf[~y], bins=bins, alpha=0.6, label="labelled reject")
    right.axvline(result.threshold, color="black", linewidth=0.8)
    right.set(xlabel="confidence", ylabel="images", title="confidence by label")
    right.legend()
    fig.tight_layout()
    _save(fig, plt, path, overwrite=True)
