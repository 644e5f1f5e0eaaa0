"""Benchmark: finetune the FULL-size head on synthetic cached vectors.

    .venv/bin/python bench/finetune.py [--rows 10000] [--epochs 20] [--lr 4e-4] [--threads N]

Builds a random FULL-config head (D = 1152, seeded like faramir.fake_weights), random pooled
vectors, and targets from a rule the decision layers can learn (a threshold at the median on a
random projection of the base head's own (v, f)). Times `faramir.finetune.finetune_head` end to end
(validation split, the base head's epoch 0, every epoch's training and validation) at upstream's
settings. torch's one-time lazy import on the first optimiser is warmed up first and not timed.
Torch threads stay at their default unless --threads is given. Scores mean nothing; only the time matters. Target on a
2-core machine: 10,000 rows × 20 epochs in under 60 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.synthetic lives in the repository

from bench.synthetic import learnable_rows  # noqa: E402
from faramir.config import FULL  # noqa: E402
from faramir.fake_weights import random_state  # noqa: E402
from faramir.finetune import finetune_head  # noqa: E402
from faramir.head import FaramirHead  # noqa: E402


def main() -> None:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--rows", type=int, default=10_000)
    ap_.add_argument("--epochs", type=int, default=20)
    ap_.add_argument("--lr", type=float, default=4e-4)
    ap_.add_argument("--batch-size", type=int, default=256)
    ap_.add_argument("--seed", type=int, default=0)
    ap_.add_argument("--threads", type=int, default=0,
                     help="torch intra-op threads (default: leave torch's default)")
    args = ap_.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = FULL
    head = FaramirHead(cfg)
    head.load_state_dict(random_state(head, args.seed + 4))
    head.eval()
    n = args.rows
    ap, ae, q, targets = learnable_rows(head, n, args.seed)

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # warm torch's lazy optimiser import

    t0, c0 = time.perf_counter(), time.process_time()
    result = finetune_head(head, ap, ae, q, targets, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0

    trained_rows = result.train_rows * result.epochs_run
    rows = [
        ("rows", f"{n:,} ({result.train_rows:,} train / {result.val_rows:,} val)"),
        ("epochs", str(result.epochs_run)),
        ("torch threads", str(torch.get_num_threads())),
        ("seconds (wall)", f"{seconds:.2f}"),
        ("CPU seconds (all threads)", f"{cpu_seconds:.2f}"),
        ("rows/s (training rows × epochs / s)", f"{trained_rows / seconds:,.0f}"),
        ("base val MCC", f"{result.base_val_mcc:.3f}"),
        ("final val MCC", f"{result.reports[-1].val_mcc:.3f}"),
        ("best val MCC (epoch)", f"{result.best_val_mcc:.3f} ({result.best_epoch})"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"finetune bench, FULL head (D={cfg.backbone_dim}), lr {args.lr:g}, batch {args.batch_size}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
