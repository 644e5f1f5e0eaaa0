"""The benchmarks' full-size weights: generated once (seeded random values, real formats and
shapes; speed does not depend on the values) unless a directory of real ones is given."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_WEIGHTS = Path.home() / ".cache/faramir/bench-weights-full"


def full_weights(weights: str | Path = DEFAULT_WEIGHTS) -> Path:
    """`weights`, generated there first (1.7 GB, seed 0, no text entry) when it holds none."""
    weights = Path(weights)
    if not (weights / "faramir-v1.pth").is_file():
        from faramir.fake_weights import generate

        print(f"generating full-size weights in {weights} (1.7 GB)...", file=sys.stderr)
        generate(weights, "full", seed=0, text=False)
    return weights
