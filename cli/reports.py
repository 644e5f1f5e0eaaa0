"""Text renderings of the library's reports: `faramir.store.queries.counting.Stats` and `faramir.store.heads.evaluate.Evaluation`."""

from __future__ import annotations

import sys

from faramir.cli.output import emit


def bar(fraction: float, width: int) -> str:
    """A unicode bar of `fraction` × `width` cells, in eighths."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def print_stats(stats) -> None:
    """Counts, per-label bars, the confidence histogram and the threshold sweep."""
    out = sys.stdout
    total, t = stats.total, stats.threshold
    pct = (lambda n: f"{100 * n / total:5.1f}%") if total else (lambda n: "    -")
    out.write(f"head {stats.head}, threshold {t}: {total} images\n")
    out.write(f"  accepted {stats.accepted:>9}  {pct(stats.accepted)}\n")
    out.write(f"  rejected {stats.rejected:>9}  {pct(stats.rejected)}\n\nlabels\n")
    labels = {k: v for k, v in stats.labels.items() if v}
    widest = max((len(k) for k in labels), default=0)
    top_count = max(labels.values(), default=1)
    for name, n in sorted(labels.items(), key=lambda kv: -kv[1]):
        out.write(f"  {name:<{widest}} {n:>9}  {pct(n)} {bar(n / top_count, 30)}\n")
    out.write("\nconfidence histogram\n")
    counts, edges = stats.histogram["counts"], stats.histogram["edges"]
    peak = max(counts, default=0) or 1
    for lo, hi, n in zip(edges[:-1], edges[1:], counts):
        out.write(f"  {lo:.2f}-{hi:.2f} {n:>9} {bar(n / peak, 40)}\n")
    out.write("\nthreshold sweep (accepted iff confidence > T)\n       T  accepted\n")
    for row in stats.sweep:
        mark = "  ◀" if row["threshold"] == t else ""
        out.write(f"  {row['threshold']:6.2f} {row['accepted']:>9}  {pct(row['accepted'])}{mark}\n")
    out.flush()


def print_evaluation(result) -> None:
    """The metrics at the threshold, the confusion matrix, per-label rows and a coarse sweep."""
    c = result.confusion
    print(f"head {result.head} at threshold {result.threshold}: {result.n} labelled images")
    print(f"  MCC {result.mcc:.4f}  precision {result.precision:.4f}  recall {result.recall:.4f}  "
          f"F1 {result.f1:.4f}  accuracy {result.accuracy:.4f}")
    print("  confusion          labelled accept  labelled reject")
    print(f"    predicted accept {c['tp']:>15}  {c['fp']:>15}")
    print(f"    predicted reject {c['fn']:>15}  {c['tn']:>15}")
    print(f"  best threshold by MCC: {result.best['threshold']:.2f} (MCC {result.best['mcc']:.4f})")
    print()
    emit(result.per_label, "table", list(result.per_label[0]) if result.per_label else ["label"])
    print()
    step = [s for s in result.sweep if round(s["threshold"] * 100) % 10 == 0]
    emit(step, "table", ["threshold", "accepted", "precision", "recall", "f1", "mcc"])
