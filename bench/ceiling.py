"""What the machine allows the experts at most, to tell a slow machine from slow code.

- The experts' work per image, counted by torch's FLOP counter over one forward of the full-size
  model on the meta device (no weights, no arithmetic: under a second).
- The machine's matrix-product throughput in fp32 and bf16 at the trunk's commonest shape (the
  MLP's first layer over a batch of 729-token images), on the threads torch uses.
- How many physical cores the CPUs this process may run on are: two vCPUs that are hyperthreads of
  one core share its matrix units (AMX among them), so "2 CPUs" can be half a 2-core machine.

work ÷ throughput is a floor on seconds per image that no code reaches (attention, convolutions,
norms and copies run below the matmul rate); how far a measured figure is above it says how much
the code leaves on the table.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from faramir.config import FULL

TOKENS = 729  # SigLIP so400m at 384²: 27 × 27 patches
MLP_DIM = 4304  # SigLIP so400m's MLP width (its trunk width is the config's backbone_dim, 1152)


def model_gflop_per_image(cfg=FULL) -> float:
    """GFLOP of one image through every expert (trunk, both pools, aesthetic MLP, ARNIQA)."""
    from torch.utils.flop_counter import FlopCounterMode

    from faramir.experts import Experts

    with torch.device("meta"):
        experts = Experts(cfg).eval().requires_grad_(False)
        xb = torch.rand(1, 3, cfg.backbone_res, cfg.backbone_res)
        xq = torch.rand(1, 3, cfg.quality_res, cfg.quality_res)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        experts(xb, xq)
    return counter.get_total_flops() / 1e9


def matmul_tflops(dtype: torch.dtype, device: torch.device, batch: int = 4, seconds: float = 1.0,
                  cfg=FULL) -> float:
    """TFLOP/s of (batch·729, D) @ (D, mlp) products in `dtype` on `device`, best of a few runs."""
    rows, inner, outer = batch * TOKENS, cfg.backbone_dim, MLP_DIM
    a = torch.randn(rows, inner, device=device).to(dtype)
    b = torch.randn(inner, outer, device=device).to(dtype)

    def run(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / n

    per_call = run(2)  # warm-up, and a first estimate
    n = max(1, int(seconds / 3 / max(per_call, 1e-6)))
    best = min(run(n) for _ in range(3))
    return 2 * rows * inner * outer / best / 1e12


def physical_cores(cpus: set[int] | None = None) -> int | None:
    """Distinct physical cores among `cpus` (default: those this process may run on), from sysfs;
    None where the topology is not readable."""
    cpus = os.sched_getaffinity(0) if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(cores)


def ceiling(device: torch.device, batch: int) -> dict:
    """The figures above, and the floors they put on seconds per image, as report keys."""
    gflop = model_gflop_per_image()
    out = {"model_gflop_per_image": gflop, "cpus": len(os.sched_getaffinity(0)),
           "physical_cores": physical_cores()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        tflops = matmul_tflops(dtype, device, batch)
        out[f"{name}_matmul_tflops"] = tflops
        out[f"{name}_floor_s_per_image"] = gflop / 1000 / tflops
    return out
