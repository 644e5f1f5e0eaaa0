"""Choosing the device, and whether a precision suits it.

fp32 is the default and the reference. bf16 pays only where the hardware multiplies bf16 faster
than float32: Intel AMX (`amx_bf16`) on CPUs, and GPUs whose bf16 tensor cores CUDA reports. A
CPU with AVX512-BF16 but no AMX computes bf16 dot products natively, yet no faster than its
float32 FMAs (measured on a 2-core Xeon VM without AMX: bf16 matmul 0.17-0.18 TFLOP/s against
0.24-0.30 in float32), and a CPU with neither emulates bf16, several times slower.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import TYPE_CHECKING

from faramir.errors import InputError

if TYPE_CHECKING:
    import torch


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset), not
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call on this platform
        return os.cpu_count() or 2


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's threads set to `n` for the block, then set back (None: left as they are). The
    setting is process-wide, and a matrix product's last bits depend on how many threads it is
    split over: every ingest on one machine, local or on Ray, runs its experts on
    `usable_cores()` threads, so equal inputs give equal embeddings bit for bit."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str = "auto") -> torch.device:
    import torch

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


# -- bf16: how a device computes it, and what to tell the user -----------------------------------


class Bf16(Enum):
    """How a device computes bf16."""

    FAST = "fast"  # native and faster than float32 (AMX, bf16-capable CUDA GPUs)
    NATIVE = "native"  # native dot products (AVX512-BF16) but no faster than float32
    EMULATED = "emulated"  # converted to float32 in software: much slower
    UNKNOWN = "unknown"  # nothing to tell by (a CPU whose flags cannot be read, MPS)


def bf16_from_cpu_flags(flags: Iterable[str]) -> Bf16:
    """Classify an x86 CPU by its /proc/cpuinfo flags."""
    flags = set(flags)
    if "amx_bf16" in flags:
        return Bf16.FAST
    if "avx512_bf16" in flags:
        return Bf16.NATIVE
    if "avx2" in flags or "avx512f" in flags:  # an x86 CPU without either: emulated
        return Bf16.EMULATED
    return Bf16.UNKNOWN  # other architectures: not measured, so no advice


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86's name, aarch64's name
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def _torch_cpu_flags() -> frozenset[str]:
    """What torch's own CPU capability queries say (private helpers; absent ones say nothing)."""
    import torch

    found = set()
    for flag, query in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"),
                        ("avx512f", "_is_avx512_supported"), ("avx2", "_is_avx2_supported")):
        fn = getattr(torch.cpu, query, None)
        try:
            if fn is not None and fn():
                found.add(flag)
        except Exception:
            pass
    return frozenset(found)


def bf16_support(device: torch.device) -> tuple[Bf16, str]:
    """(how `device` computes bf16, what that rests on, in a few words)."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Bf16.FAST, f"{name}: bf16 tensor cores"
        return Bf16.EMULATED, f"{name}: no native bf16"
    if device.type != "cpu":
        return Bf16.UNKNOWN, f"{device.type}: not measured"
    flags = cpu_flags()
    source = "/proc/cpuinfo"
    if flags is None:
        flags, source = _torch_cpu_flags(), "torch.cpu"
    kind = bf16_from_cpu_flags(flags)
    shown = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return kind, f"CPU ({source}): {', '.join(shown) if shown else 'no bf16 flags'}"


def precision_advice(device: torch.device, precision: str, support: tuple[Bf16, str] | None = None) -> str | None:
    """One line for the user when the other precision would serve them better on `device`;
    `support` is `bf16_support(device)` (looked up when not given)."""
    kind, why = support if support is not None else bf16_support(device)
    if precision == "fp32" and kind is Bf16.FAST:
        return (f"this {device.type.upper()} computes bf16 natively ({why}): precision bf16 would be "
                f"faster (fp32 stays the reference; bench/assess.py measures both)")
    if precision == "bf16" and kind is Bf16.EMULATED:
        return f"precision bf16 is emulated here ({why}) and several times slower than fp32; use fp32 on this machine"
    if precision == "bf16" and kind is Bf16.NATIVE:
        return (f"precision bf16 runs natively here ({why}) but without AMX it is no faster than fp32; "
                f"use fp32 on this machine")
    return None
