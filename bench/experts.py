"""The experts and head alone, no decoding: images/s by precision and batch size, and where the time goes.

Usage: python bench/experts.py [--device cpu] [--batch 4 16 64] [--reps 3] [--parts] [--profile]
                               [--weights DIR] [--json]

Full-size model (generated weights unless --weights names real ones; speed does not depend on the
values), random inputs of the real shapes. For each precision: warm-up, then `--reps` timed
forwards (experts + head) per batch size, synchronised on a GPU. `--parts` also times the SigLIP
trunk, the two attention pools and ARNIQA apart (and the trunk with SDPA's math backend), per
image; `--profile` prints torch.profiler's top operators of one bf16 forward. Where `bench/assess.py`
measures what a user waits for, this measures what the model alone costs: on a GPU decoding, not the
model, sets the pace of short runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.full_weights import DEFAULT_WEIGHTS, full_weights  # noqa: E402
from faramir.config import PRECISIONS  # noqa: E402
from faramir.devices import bf16_support, resolve_device  # noqa: E402
from faramir.weights import load_model  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, reps: int, device: torch.device) -> float:
    """Seconds per call of `fn`, after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def inputs(model, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.info.config
    return (torch.rand(batch, 3, cfg.backbone_res, cfg.backbone_res).half(),
            torch.rand(batch, 3, cfg.quality_res, cfg.quality_res).half())


def parts(model, batch: int, reps: int, device: torch.device) -> dict:
    """Seconds per image of the trunk, the pools and ARNIQA, and of the trunk with SDPA's math backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    e = model.experts
    xb, xq = (x.to(device).float() for x in inputs(model, batch))
    with torch.inference_mode():
        tokens = e.forward_features(xb)
        out = {"trunk": timed(lambda: e.forward_features(xb), reps, device),
               "pools": timed(lambda: e.forward_pools(tokens), reps, device),
               "arniqa": timed(lambda: e.forward_quality(xq.contiguous(memory_format=torch.channels_last)),
                               reps, device)}
        with sdpa_kernel([SDPBackend.MATH]):
            out["trunk_sdpa_math"] = timed(lambda: e.forward_features(xb), reps, device)
    return {name: seconds / batch for name, seconds in out.items()}


def profile(model, batch: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    xb, xq = inputs(model, batch)
    model.score(model.features(xb, xq))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        model.score(model.features(xb, xq))
        sync(model.device)
    key = "self_cuda_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=45)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parts", action="store_true", help="time trunk, pools and ARNIQA apart (first batch size)")
    ap.add_argument("--profile", action="store_true", help="top operators of one bf16 forward (first batch size)")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    args = ap.parse_args()

    device = resolve_device(args.device)
    kind, capability = bf16_support(device)
    full_weights(args.weights)
    if not args.json:
        print(f"bf16 on {device}: {kind.value} ({capability}); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"{'precision':<10}{'batch':>6}{'ms/batch':>10}{'images/s':>10}{'GPU GB':>8}")
    rows, breakdown, table = [], {}, None
    for precision in PRECISIONS:
        model = load_model(args.weights, device, precision)
        for batch in args.batch:
            xb, xq = inputs(model, batch)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(lambda: model.score(model.features(xb, xq)), args.reps, device)
            gpu_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            rows.append({"device": str(device), "precision": precision, "batch": batch,
                         "ms_per_batch": seconds * 1e3, "images_per_s": batch / seconds, "peak_gpu_gb": gpu_gb})
            print(json.dumps(rows[-1]) if args.json else
                  f"{precision:<10}{batch:>6}{seconds * 1e3:>10.1f}{batch / seconds:>10.2f}"
                  f"{'' if gpu_gb is None else f'{gpu_gb:.2f}':>8}", flush=True)
        if args.parts:
            breakdown[precision] = parts(model, args.batch[0], args.reps, device)
        if args.profile and precision == "bf16":
            table = profile(model, args.batch[0])
        del model
    for precision, seconds in breakdown.items():
        print(json.dumps({"precision": precision, "parts_s_per_image": seconds}) if args.json else
              f"{precision} parts, s/image: " + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()))
    if table is not None:
        print(table)


if __name__ == "__main__":
    main()
