"""Choosing the device, and whether a precision suits it."""

from __future__ import annotations

import torch

from faramir.errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda': no CUDA device is available here; use 'cpu' or 'auto'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps': MPS is not available here; use 'cpu' or 'auto'")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); else bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True  # not Linux: let the user judge
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A reason not to use `precision` on `device`, if there is one."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return ("precision bf16 on a CPU without native bf16 (no AVX512-BF16/AMX) is emulated and "
                "slower than fp32 here; use fp32 on this machine")
    return None
