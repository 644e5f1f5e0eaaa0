"""Proof that the queue pays: a simulated curator labels what `faramir queue` asks for, or a random
sample, round after round; MCC against the curator by labels given.

    python bench/active_learning.py                    # 100K rows, 3 seeds, rounds of 50 up to 1,000
    python bench/active_learning.py --rows 20000 --seeds 1 --max-labels 600 --json

The cache is synthetic (bench.synthetic, built once under --dir and reused). The curator is a
hidden head: the cache's released head with its decision layers (linear_3, activation_2,
linear_4) perturbed by seeded noise, scaled until it disagrees with the released head on about
15% of the images at threshold 0.5; it answers every label request (accept or reject).

Each seed runs each strategy from no labels: a round asks for --batch labels (the queue under the
current head, or a uniform sample of the unlabelled images), writes them as ordinary labels,
finetunes the released head on all labels so far with upstream's recipe
(`faramir.store.finetune`, 20 epochs, which scores the cache with the new head: its decision
layers over the cached v and f), and measures the new head's MCC against the curator over every
image. `round_s` is one round's wall time: finetune, rescore and the next queue.

Prints MCC by labels given (mean over seeds) as a table; with --json, one object per strategy:
strategy, rows, seeds, batch, mcc_by_labels, labels_to_match_random_1000 (the fewest labels at
which the strategy's mean MCC reaches random sampling's at 1,000), round_s (median) and
cpu_round_s. Targets: the queue matches random's 1,000 with at most 500; a round <= 5 s at 100K
rows on 2 cores. Tests never assert on timings; this only prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAD = "faramir-v1"
TUNED = "active-learning"
THRESHOLD = 0.5
DISAGREE = 0.15  # the hidden curator disagrees with the released head on about this share


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ensure_cache(rows: int, root: Path) -> Path:
    from bench.synthetic import write_cache

    db = root / f"active-learning-{rows}"
    marker = root / f"active-learning-{rows}.rows"  # beside the cache: a cache holds only its tables
    if not (marker.is_file() and marker.read_text() == str(rows)):
        import shutil

        shutil.rmtree(db, ignore_errors=True)
        write_cache(db, rows, seed=0)
        marker.write_text(str(rows))
    return db


def released_inputs(cache):
    """The released head, and its cached v (N, 30) and f (N, 2) in the table's row order."""
    import torch

    from faramir.checkpoints import head_from_bytes
    from faramir.store import schema
    from faramir.store.heads import registry
    from faramir.store.labels.queue import vectors

    cols = registry.columns(cache, HEAD)
    table = cache.read(schema.IMAGES, ["id", cols.logits, cols.free])
    v = torch.from_numpy(vectors(table.column(cols.logits), 30).copy())
    f = torch.from_numpy(vectors(table.column(cols.free), 2).copy())
    head = head_from_bytes(registry.checkpoint(cache, HEAD), cache.config()).eval()
    return head, table.column("id").to_pylist(), v, f


def curator(head, v, f, seed: int) -> np.ndarray:
    """The hidden curator's accept (True) / reject per row: the released head's decision layers
    perturbed by noise scaled (bisection) to disagree with it on about `DISAGREE` of the rows."""
    import copy

    import torch

    with torch.inference_mode():
        base = (head.forward_decision(v, f).squeeze(-1).sigmoid() > THRESHOLD).numpy()
    noise = {}
    gen = torch.Generator().manual_seed(10_000 + seed)
    layers = [head.head.linear_3, head.head.linear_4]
    for layer in layers:
        scale = layer.weight.detach().std()  # the layer's own scale, for its bias too
        for name, p in layer.named_parameters():
            noise[(id(layer), name)] = torch.randn(p.shape, generator=gen) * scale

    def hidden(scale: float) -> np.ndarray:
        other = copy.deepcopy(head)
        for layer, mine in zip(layers, [other.head.linear_3, other.head.linear_4]):
            for name, p in mine.named_parameters():
                p.data += scale * noise[(id(layer), name)]
        with torch.inference_mode():
            d = other.forward_decision(v, f).squeeze(-1).numpy()
        # Another taste, not a stricter one: the curator accepts as many images as the released head.
        return d > np.quantile(d, 1.0 - base.mean())

    low, high = 0.0, 4.0
    for _ in range(30):
        mid = (low + high) / 2
        answer = hidden(mid)
        rate = float((answer != base).mean())
        if abs(rate - DISAGREE) < 0.01:
            break
        low, high = (mid, high) if rate < DISAGREE else (low, mid)
    return answer


def reset(cache) -> None:
    from faramir.store.heads.registry import heads, remove_head
    from faramir.store.labels.table import remove_labels

    remove_labels(all=True, db=cache)
    if any(h["name"] == TUNED for h in heads(cache)):
        remove_head(TUNED, cache)


def run(cache, strategy: str, seed: int, target: dict[str, bool], ids: list[str], batch: int,
        max_labels: int, work: Path) -> list[dict]:
    """One strategy from no labels: [{labels, mcc, round_s, cpu_s}] after each round."""
    from faramir.store.filters import Filter
    from faramir.store.heads.finetune import finetune
    from faramir.store.labels.queue import queue
    from faramir.store.labels.table import set_labels

    reset(cache)
    truth = np.array([target[i] for i in ids])
    rng = np.random.default_rng(seed)
    given: set[str] = set()
    head = HEAD
    points = [{"labels": 0, "mcc": _mcc(cache, head, truth)}]  # the released head
    ask = _asker(cache, strategy, ids, given, rng, batch, queue, Filter)
    chosen = ask(head)
    while len(given) < max_labels:
        t0, c0 = time.perf_counter(), cpu()
        for label in (True, False):
            part = [i for i in chosen if target[i] == label]
            if part:
                set_labels(part, "accept" if label else "reject", cache, source="curator")
        given.update(chosen)
        if len({target[i] for i in given}) == 2:  # a finetune needs an accept and a reject
            finetune(HEAD, work / f"{strategy}-{seed}.pth", db=cache, name=TUNED, seed=seed, force=True, threads=1)
            head = TUNED
        chosen = ask(head) if len(given) < max_labels else []
        wall, cpu_s = time.perf_counter() - t0, cpu() - c0
        points.append({"labels": len(given), "mcc": _mcc(cache, head, truth), "round_s": wall, "cpu_s": cpu_s})
    return points


def _mcc(cache, head: str, truth: np.ndarray) -> float:
    """MCC of `head`'s decisions at the threshold against the curator's, over every image."""
    from faramir.metrics import mcc
    from faramir.store import schema
    from faramir.store.heads import registry

    conf = cache.read(schema.IMAGES, [registry.columns(cache, head).confidence]).column(0)
    return mcc(truth, conf.to_numpy(zero_copy_only=False) > np.float32(THRESHOLD))


def _asker(cache, strategy, ids, given, rng, batch, queue, Filter):
    def ask(head: str) -> list[str]:
        if strategy == "queue":
            return queue(cache, limit=batch, filter=Filter(head=head, threshold=THRESHOLD)).rows.column("id").to_pylist()
        left = [i for i in ids if i not in given]
        return [left[j] for j in rng.choice(len(left), batch, replace=False)]

    return ask


def summarise(results: dict[str, list[list[dict]]], rows: int, batch: int) -> list[dict]:
    mean = {s: {} for s in results}
    for s, runs in results.items():
        for points in runs:
            for p in points:
                mean[s].setdefault(p["labels"], []).append(p["mcc"])
    curves = {s: {n: float(np.mean(v)) for n, v in sorted(m.items())} for s, m in mean.items()}
    goal = curves.get("random", {}).get(1000)
    out = []
    for s, runs in results.items():
        reach = next((n for n, m in curves[s].items() if goal is not None and m >= goal), None)
        out.append({"strategy": s, "rows": rows, "seeds": len(runs), "batch": batch, "mcc_by_labels": curves[s],
                    "random_mcc_at_1000": goal, "labels_to_match_random_1000": reach,
                    "round_s": float(np.median([p["round_s"] for r in runs for p in r if "round_s" in p])),
                    "cpu_round_s": float(np.median([p["cpu_s"] for r in runs for p in r if "cpu_s" in p]))})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50, help="labels per round (default 50)")
    parser.add_argument("--max-labels", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import warnings

    from faramir.store.cache import Cache

    warnings.simplefilter("ignore")  # the synthetic cache's "generated weights" warning, every call
    cache = Cache.open(ensure_cache(args.rows, args.dir))
    head, ids, v, f = released_inputs(cache)
    results: dict[str, list] = {"queue": [], "random": []}
    with tempfile.TemporaryDirectory() as work:
        for seed in range(args.seeds):
            target = dict(zip(ids, curator(head, v, f, seed).tolist()))
            for strategy in results:
                results[strategy].append(run(cache, strategy, seed, target, ids, args.batch, args.max_labels,
                                             Path(work)))
                print(f"seed {seed} {strategy}: MCC {results[strategy][-1][-1]['mcc']:.3f} at "
                      f"{results[strategy][-1][-1]['labels']} labels", file=sys.stderr, flush=True)
    reset(cache)
    report(summarise(results, args.rows, args.batch), args)


def report(summary: list[dict], args) -> None:
    if args.json:
        for entry in summary:
            print(json.dumps(entry))
        return
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; {args.rows:,} rows; {args.seeds} seeds; rounds of {args.batch}")
    counts = sorted({n for e in summary for n in e["mcc_by_labels"]})
    print("| labels | " + " | ".join(f"MCC {e['strategy']}" for e in summary) + " |")
    print("|---|" + "---|" * len(summary))
    for n in counts:
        print(f"| {n} | " + " | ".join(f"{e['mcc_by_labels'].get(n, float('nan')):.3f}" for e in summary) + " |")
    for e in summary:
        print(f"{e['strategy']}: reaches random's MCC at 1,000 labels ({e['random_mcc_at_1000']:.3f}) with "
              f"{e['labels_to_match_random_1000']} labels; a round {e['round_s']:.2f} s wall, "
              f"{e['cpu_round_s']:.2f} s CPU")


if __name__ == "__main__":
    main()
