"""Seconds per image of full-size `faramir assess` in fp32 and bf16, and bf16's deviation.

Usage: python bench/assess.py [--n 4] [--batch-size 4] [--weights DIR] [--device cpu]

Runs the library's assess pipeline (decode workers + batched experts + head) over N real artwork
images (bench/images.py) with full-size weights (generated ones unless --weights names real ones;
speed does not depend on the values). Model loading is timed separately.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.images import bench_images  # noqa: E402
from bench.memory import peak_rss_mb  # noqa: E402
from faramir.fake_weights import generate  # noqa: E402
from faramir.devices import resolve_device  # noqa: E402
from faramir.pipeline import Assessment, assess  # noqa: E402
from faramir.sources import Source  # noqa: E402
from faramir.weights import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--weights", type=Path, default=Path.home() / ".cache/faramir/bench-weights-full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()

    if not (args.weights / "faramir-v1.pth").is_file():
        generate(args.weights, "full", seed=0, text=False)
    t0 = time.perf_counter()
    model = load_model(args.weights, resolve_device(args.device))
    load_s = time.perf_counter() - t0
    sources = [Source(str(p), str(p)) for p in bench_images(args.n, seed=1)]

    results, rows = {}, []
    for precision in args.precisions.split(","):
        t0 = time.perf_counter()
        out = [r for r in assess(model, sources, 0.5, args.batch_size, None, precision)
               if isinstance(r, Assessment)]
        dt = time.perf_counter() - t0
        results[precision] = out
        rows.append((precision, len(out), dt / max(len(out), 1), len(out) / dt))

    print(f"machine: {torch.get_num_threads()} torch threads, device {args.device}, "
          f"torch {torch.__version__}; model load {load_s:.1f} s; "
          f"peak RSS {peak_rss_mb() / 1024:.2f} GB")
    print(f"{'precision':<10}{'images':>8}{'s/image':>10}{'images/s':>10}")
    for precision, n, spi, ips in rows:
        print(f"{precision:<10}{n:>8}{spi:>10.2f}{ips:>10.3f}")
    if {"fp32", "bf16"} <= results.keys():
        a = np.array([r.logits for r in results["fp32"]])
        b = np.array([r.logits for r in results["bf16"]])
        agree = np.mean([x.accepted == y.accepted and x.label == y.label
                         for x, y in zip(results["fp32"], results["bf16"])])
        print(f"bf16 vs fp32: max |Δ decision logit| {np.abs(a[:, 30] - b[:, 30]).max():.2e}, "
              f"max |Δ any logit| {np.abs(a - b).max():.2e}, same decision+label {agree:.0%}")


if __name__ == "__main__":
    main()
