"""The opt-in compiled mode: the experts through torch.compile, for one batch size.

inductor with frozen weights fuses the trunk's elementwise work into its matrix products and packs
the weights once for the CPU's matrix units. What it buys depends on the hardware (README,
Performance): on a 2-core AMX CPU bf16 went from 1.36 to 1.05 s/image end to end for 42 s of
compiling, fp32 from 3.09 to 2.96 for 98 s; on a 2-core Xeon without AMX no clear gain. So it is
worth it for long bf16 runs on AMX (it pays back after a few hundred images) and is never the
default.

The compiled graph is specialised to one batch shape: batches smaller than `batch_size` (the last
one, or one with unreadable files) are padded with zeros to it and the padding's outputs dropped,
so a run compiles once. Results equal the eager model's within float rounding (fused kernels sum
in another order): the same decisions and labels on the test images (tests/test_compiled.py).
"""

from __future__ import annotations

import time

import torch

from faramir.errors import InputError


def compile_experts(model, batch_size: int) -> float:
    """Compile `model`'s experts (a `FaramirModel`) for batches of `batch_size`, in place, and
    return the seconds compiling took (one warm-up batch, where inductor does its work)."""
    if batch_size < 1:
        raise InputError("batch size must be at least 1 to compile the experts")
    eager = model.experts.forward
    model.experts.forward = torch.compile(eager, dynamic=False, options={"freezing": True})
    model.fixed_batch = batch_size
    cfg = model.info.config
    started = time.perf_counter()
    try:
        model.features(torch.zeros(batch_size, 3, cfg.backbone_res, cfg.backbone_res, dtype=torch.float16),
                       torch.zeros(batch_size, 3, cfg.quality_res, cfg.quality_res, dtype=torch.float16))
    except Exception as ex:
        model.experts.forward, model.fixed_batch = eager, None
        first = (str(ex).strip().splitlines() or [""])[0][:200]
        raise InputError(f"--compile: torch.compile failed ({type(ex).__name__}: {first}); on a CPU it "
                         f"needs a C++ compiler (apt-get install g++); or run without --compile") from ex
    return time.perf_counter() - started
