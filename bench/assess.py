"""Seconds per image of full-size `faramir assess` in fp32 and bf16, and how far bf16 strays.

Usage: python bench/assess.py [--n 8] [--chunk 4] [--batch-size 4] [--weights DIR] [--images DIR]
                              [--device cpu] [--workers N] [--compile] [--json]

Runs the library's assess pipeline end to end (decode workers + batched experts + head) over N
real artwork images (bench/images.py) with full-size weights (generated ones unless --weights names
real ones; speed does not depend on the values), once with a model loaded for fp32 and once with
one loaded for bf16. The two alternate chunk by chunk in this one process, in turns (fp32 first,
then bf16 first), so a machine whose load changes during the run slows both alike. Model loading
is timed apart. Agreement (same decision, same label, largest logit differences) is taken over all
N images; it does not depend on timing, so a busy machine may measure it with a large N.

--compile adds both precisions through torch.compile (inductor, frozen weights) to the turns, and
the seconds each took to compile: what a compiled mode would save per image against what it costs
once.

The first line says how the device computes bf16 (the AMX/AVX512-BF16 flags of a CPU, or CUDA's
own answer); bf16 is faster than fp32 only where it is "fast" (see faramir/devices.py). The second
puts the figures against what the machine allows (bench/ceiling.py): the experts' FLOPs per image
over the machine's matmul rate in each precision, a floor no code reaches, and how many physical
cores the CPUs used are; "x floor" is each variant's seconds per image over its precision's floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import faramir.experts  # noqa: E402,F401  (imports timm: seconds that are not model loading)
from bench.ceiling import ceiling  # noqa: E402
from bench.full_weights import DEFAULT_WEIGHTS, full_weights  # noqa: E402
from bench.images import bench_images  # noqa: E402
from bench.memory import peak_rss_mb  # noqa: E402
from faramir.compiled import compile_experts  # noqa: E402
from faramir.config import N_ACCEPT, N_CLASSES, PRECISIONS  # noqa: E402
from faramir.decoding import default_workers, read_item  # noqa: E402
from faramir.devices import Bf16, bf16_support, resolve_device  # noqa: E402
from faramir.pipeline import Assessment, assess  # noqa: E402
from faramir.sources import Source  # noqa: E402
from faramir.weights import SIGLIP_FILE, load_model, trunk_fingerprint  # noqa: E402


def agreement(fp32: list[Assessment], bf16: list[Assessment]) -> dict:
    """How bf16's results differ from fp32's on the same images."""
    assert [r.path for r in fp32] == [r.path for r in bf16]
    a = np.array([r.logits for r in fp32], np.float64)
    b = np.array([r.logits for r in bf16], np.float64)
    return {
        "agreement_images": len(fp32),
        "same_decision_fraction": float(np.mean([x.accepted == y.accepted for x, y in zip(fp32, bf16)])),
        # Generated weights put every decision logit in a narrow band, mostly far from 0: compare
        # bf16's deviation with this spread rather than trusting "same decision" alone.
        "fp32_decision_logit_std": float(a[:, 30].std()),
        "same_label_fraction": float(np.mean([x.label == y.label for x, y in zip(fp32, bf16)])),
        # A label is an argmax: it flips where fp32's two best class logits nearly tie.
        "largest_fp32_label_margin_flipped": max(
            (label_margin(x) for x, y in zip(fp32, bf16) if x.label != y.label), default=0.0),
        "median_fp32_label_margin": float(np.median([label_margin(x) for x in fp32])),
        "max_abs_decision_logit_delta": float(np.abs(a[:, 30] - b[:, 30]).max()),
        "max_abs_logit_delta": float(np.abs(a - b).max()),
        "median_abs_decision_logit_delta": float(np.median(np.abs(a[:, 30] - b[:, 30]))),
        "max_abs_confidence_delta": float(max(abs(x.confidence - y.confidence) for x, y in zip(fp32, bf16))),
    }


def label_margin(r: Assessment) -> float:
    """fp32's lead of the chosen label over the runner-up in its group (accept- or reject-biased)."""
    group = r.logits[:N_ACCEPT] if r.accepted else r.logits[N_ACCEPT:N_CLASSES]
    first, second = sorted(group)[-2:][::-1]
    return float(first - second)


def decode_seconds(sources: list[Source]) -> float:
    """CPU seconds per image to read, hash and preprocess (in this process, no model)."""
    t0 = time.process_time()
    for i, src in enumerate(sources):
        read_item(i, src)
    return (time.process_time() - t0) / max(len(sources), 1)


def compiled_forward(model, batch_size: int) -> tuple[Callable, float]:
    """(the experts' forward as `faramir.compiled` compiles it, the seconds compiling took); the
    model is left eager, to switch between the two turn by turn."""
    eager = model.experts.forward
    seconds = compile_experts(model, batch_size)
    compiled, model.experts.forward, model.fixed_batch = model.experts.forward, eager, None
    return compiled, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="images, timed and compared (default 8)")
    ap.add_argument("--chunk", type=int, default=4, help="images per turn of each variant (default 4)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: spare cores)")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--images", type=Path, default=None, help="bench/images.py cache (default: its own)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true",
                    help="also time both precisions through torch.compile (inductor, frozen weights), "
                         "with the compile time; keep --n and --chunk multiples of --batch-size, or "
                         "the compiled turns pad their smaller batches to it")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()

    device = resolve_device(args.device)
    kind, capability = bf16_support(device)
    full_weights(args.weights)
    trunk_fingerprint(args.weights / SIGLIP_FILE)  # hashed once here, so neither load pays for it
    models, load_s, forwards, compile_s = {}, {}, {}, {}
    for precision in PRECISIONS:
        t0 = time.perf_counter()
        models[precision] = load_model(args.weights, device, precision)
        load_s[precision] = time.perf_counter() - t0
        forwards[precision] = models[precision].experts.forward
    if args.compile:
        for precision in PRECISIONS:
            print(f"compiling the {precision} experts...", file=sys.stderr, flush=True)
            forwards[f"{precision}_compiled"], compile_s[precision] = compiled_forward(
                models[precision], args.batch_size)
    paths = bench_images(args.n, cache_dir=args.images, seed=1)
    sources = [Source(str(p), str(p)) for p in paths]
    decode_s = decode_seconds(sources[: min(len(sources), 16)])

    machine = ceiling(device, args.batch_size)
    variants = list(forwards)  # fp32, bf16[, fp32_compiled, bf16_compiled]
    results: dict[str, list[Assessment]] = {v: [] for v in variants}
    seconds = dict.fromkeys(variants, 0.0)
    failed = 0
    for turn, start in enumerate(range(0, len(sources), args.chunk)):
        chunk = sources[start:start + args.chunk]
        for variant in variants if turn % 2 == 0 else variants[::-1]:
            model = models[variant.split("_")[0]]
            model.experts.forward = forwards[variant]
            model.fixed_batch = args.batch_size if variant.endswith("_compiled") else None
            t0 = time.perf_counter()
            out = list(assess(model, chunk, 0.5, args.batch_size, args.workers))
            seconds[variant] += time.perf_counter() - t0
            results[variant].extend(r for r in out if isinstance(r, Assessment))
            if variant == "fp32":
                failed += sum(not isinstance(r, Assessment) for r in out)
        print(f"  {start + len(chunk)}/{len(sources)} images: "
              + ", ".join(f"{v} {seconds[v] / max(len(results[v]), 1):.2f} s/image" for v in variants),
              file=sys.stderr, flush=True)

    done = len(results["fp32"])
    report = {
        "device": str(device),
        "bf16_support": kind.value,
        "native_bf16": kind in (Bf16.FAST, Bf16.NATIVE),
        "bf16_capability": capability,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "decode_workers": default_workers() if args.workers is None else args.workers,
        "batch_size": args.batch_size,
        "images": done,
        "unreadable": failed,
        **{f"{v}_s_per_image": seconds[v] / max(done, 1) for v in variants},
        "decode_s_per_image": decode_s,
        **{f"{p}_load_s": load_s[p] for p in PRECISIONS},
        **{f"{p}_compile_s": compile_s[p] for p in compile_s},
        "peak_rss_gb": peak_rss_mb() / 1024,
        **machine,
        **agreement(results["fp32"], results["bf16"]),
    }
    if args.json:
        print(json.dumps(report))
        return
    r = report
    print(f"bf16 on {r['device']}: {r['bf16_support']} ({r['bf16_capability']}); torch {r['torch']}, "
          f"{r['torch_threads']} threads, {r['decode_workers']} decode workers, batch {r['batch_size']}")
    print(f"ceiling: the experts do {r['model_gflop_per_image']:.0f} GFLOP per image; matmul at the trunk's "
          f"shape {r['fp32_matmul_tflops']:.2f} TFLOP/s fp32, {r['bf16_matmul_tflops']:.2f} bf16, so no code "
          f"beats {r['fp32_floor_s_per_image']:.2f} / {r['bf16_floor_s_per_image']:.2f} s/image; "
          f"{r['cpus']} CPUs on {r['physical_cores'] or '?'} physical cores")
    print(f"{'variant':<15}{'images':>8}{'s/image':>10}{'images/s':>10}{'x floor':>9}{'load s':>8}{'compile s':>11}")
    for v in variants:
        p, spi = v.split("_")[0], r[f"{v}_s_per_image"]
        compiled = f"{compile_s[p]:>11.1f}" if v.endswith("_compiled") else f"{'':>11}"
        print(f"{v:<15}{done:>8}{spi:>10.2f}{1 / spi if spi else 0:>10.3f}"
              f"{spi / r[f'{p}_floor_s_per_image']:>9.2f}{r[f'{p}_load_s']:>8.1f}{compiled}")
    print(f"decoding alone: {r['decode_s_per_image']:.3f} CPU s/image; "
          f"peak RSS {r['peak_rss_gb']:.2f} GB (both models)")
    print(f"bf16 vs fp32 on {done} images: same decision {r['same_decision_fraction']:.1%}, "
          f"same label {r['same_label_fraction']:.1%}, max |Δ decision logit| "
          f"{r['max_abs_decision_logit_delta']:.3g} (median {r['median_abs_decision_logit_delta']:.2g}), "
          f"max |Δ any logit| {r['max_abs_logit_delta']:.3g}, max |Δ confidence| {r['max_abs_confidence_delta']:.3g}; "
          f"fp32's decision logits spread (std) {r['fp32_decision_logit_std']:.3g}; labels that changed "
          f"led by at most {r['largest_fp32_label_margin_flipped']:.3g} in fp32 (median lead "
          f"{r['median_fp32_label_margin']:.3g})")


if __name__ == "__main__":
    main()
