"""Generated weights: the four files in their real formats, filled with seeded random values.

For tests, benchmarks and offline trials only. Scores from them mean nothing, and every command
that loads them says so. The SigLIP file's metadata records the seed and config, so a generated
directory is recognised wherever it goes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from faramir.checkpoints import save_state_dict
from faramir.config import VARIANTS, FaramirConfig
from faramir.files import atomic_path
from faramir.weights import (
    AESTHETIC_FILE, ARNIQA_FILE, FARAMIR_FILE, META_CONFIG, META_GENERATED, SIGLIP_FILE,
)


def _fill(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """A plausible value for one tensor: unit norms, zero biases, small fan-in-scaled weights."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros((), dtype=torch.int64)
    if leaf == "running_var" or leaf == "stddev":
        return 0.5 + torch.rand(shape, generator=gen)
    if leaf in ("running_mean", "mean"):
        return 0.1 * torch.randn(shape, generator=gen)
    if leaf == "m2":
        return torch.rand(shape, generator=gen) + 1.0
    if leaf in ("alpha", "gamma_m", "gamma_p"):
        return torch.randn(shape, generator=gen) * (1.0 if leaf == "alpha" else 0.3)
    if leaf == "bias":
        return 0.02 * torch.randn(shape, generator=gen)
    if len(shape) <= 1 and leaf == "weight":  # LayerNorm / BatchNorm scale, ChannelNorm count
        return 1.0 + 0.05 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / math.sqrt(max(fan_in, 1))


def random_state(module: torch.nn.Module, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        prefix + k: _fill(k, v.shape, gen).to(v.dtype if not v.is_floating_point() else torch.float32)
        for k, v in module.state_dict().items()
    }


def generate(dest: str | os.PathLike, variant: str = "tiny", seed: int = 0) -> Path:
    """Write the four weight files for `variant` ("tiny" or "full") into `dest`."""
    from faramir.experts import Experts
    from faramir.head import FaramirHead

    cfg: FaramirConfig = VARIANTS[variant]
    with torch.device("meta"):
        experts = Experts(cfg)
        head = FaramirHead(cfg)
    root = Path(dest)
    (root / SIGLIP_FILE).parent.mkdir(parents=True, exist_ok=True)

    trunk = random_state(experts.trunk, seed)
    meta = {
        "format": "pt",
        META_CONFIG: cfg.to_json(),
        META_GENERATED: f"GENERATED {variant} weights, seed {seed}: random values, scores mean nothing",
    }
    with atomic_path(root / SIGLIP_FILE) as tmp:
        save_file(trunk, str(tmp), metadata=meta)
    del trunk
    for name, state in (
        (ARNIQA_FILE, random_state(experts.quality, seed + 1)),
        (AESTHETIC_FILE, random_state(experts.aesthetic, seed + 2)),
        (FARAMIR_FILE, {
            **random_state(experts.faramir_pool, seed + 3, "attn_pool."),
            **random_state(head, seed + 4),
        }),
    ):
        save_state_dict(state, root / name)
    return root
