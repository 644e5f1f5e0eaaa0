"""Stage one throughput and memory: `faramir.store.ingest` against an upstream-style loop.

Speed (default): full-size weights (generated when absent) over real artwork images
(`bench/images.py`). Each mode runs in its own process, so peak RSS is per mode:

    baseline  upstream-style: one image at a time, decoded in the model process, every expert
              run per image, fp32 (what running upstream's inference.py per image costs)
    fp32      `ingest` into a fresh cache: decode workers, batches, background writer
    bf16      the same with --precision bf16
    ... and the three again on CUDA when a GPU is present (`--device auto` or `cuda`).

The ratio column is images/s over the baseline's on the same device. The bf16 run's decision
logits are compared with the fp32 run's on the images both ingested.

Memory (`--memory`): the tiny generated model over small generated images, 1,000 and 10,000 by
default, each into a fresh cache: peak RSS should not grow with the collection.

    python bench/ingest.py                        # fp32/baseline on 8 images, bf16 on 16 (CPU: ~5 min)
    python bench/ingest.py --n 2                  # a quick check that everything runs
    python bench/ingest.py --memory               # tiny model, 1,000 and 10,000 images
    python bench/ingest.py --memory --memory-sizes 200,1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.full_weights import DEFAULT_WEIGHTS, full_weights  # noqa: E402
from bench.memory import children_peak_rss_mb, peak_rss_mb  # noqa: E402

# -- children: one measurement each, printed as one JSON line ---------------------------------


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident set, in MB. The decode workers are
    forked from the model process, so theirs counts the model's pages they share."""
    return peak_rss_mb(), children_peak_rss_mb()


def _child(job: dict) -> dict:
    import torch

    from faramir.devices import resolve_device
    from faramir.weights import load_model

    device = resolve_device(job["device"])
    model = load_model(job["weights"], device, job["precision"])
    paths = [Path(p) for p in job["paths"]]
    out = {"mode": job["mode"], "device": device.type, "images": len(paths)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    if job["mode"] == "baseline":
        from faramir import ImageLoadError, load_image

        res = (model.info.config.backbone_res, model.info.config.quality_res)
        done = 0
        start = time.perf_counter()
        for path in paths:
            try:
                xb, xq = load_image(path, *res)
            except ImageLoadError:
                continue
            feats = model.features(torch.from_numpy(xb)[None], torch.from_numpy(xq)[None], "fp32")
            model.score(feats).cpu()
            done += 1
        seconds = time.perf_counter() - start
        out.update(workers=0, done=done)
    else:
        from faramir.store.ingestion import ingest_all

        summary = ingest_all(paths, db=job["db"], model=model, precision=job["precision"],
                             workers=job["workers"], batch_size=job["batch_size"])
        seconds = summary.elapsed_s
        from faramir.decoding import default_workers

        out.update(workers=default_workers() if job["workers"] is None else job["workers"],
                   done=summary.new, failed=summary.failed)
    out["seconds"] = seconds
    out["rss_mb"], out["workers_rss_mb"] = _peak_rss_mb()
    if device.type == "cuda":
        out["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_child(job: dict) -> dict:
    print(f"  running {job['mode']} on {job['device']} over {len(job['paths'])} images...",
          file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{job['mode']} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the parent: jobs, then the table ----------------------------------------------------------


def _table(rows: list[dict]) -> None:
    head = ("mode", "device", "images", "workers", "s/image", "images/s", "peak RSS MB",
            "workers RSS MB", "GPU MB", "vs baseline")
    lines = [head]
    baseline = {r["device"]: r for r in rows if r["mode"] == "baseline"}
    for r in rows:
        ips = r["done"] / r["seconds"] if r["seconds"] > 0 else 0.0
        base = baseline.get(r["device"])
        ratio = ips / (base["done"] / base["seconds"]) if base and base["done"] else None
        lines.append((
            r["mode"], r["device"], str(r["done"]), str(r["workers"]),
            f"{r['seconds'] / max(r['done'], 1):.3f}", f"{ips:.3f}", f"{r['rss_mb']:.0f}",
            f"{r['workers_rss_mb']:.0f}" if r["workers"] else "-",
            f"{r['gpu_mb']:.0f}" if "gpu_mb" in r else "-",
            f"{ratio:.2f}x" if ratio is not None else "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    if any(r["workers"] for r in rows):
        print("(workers RSS: the largest decode worker; it counts pages shared copy-on-write with the "
              "main process at fork, so it is not additional memory)")


def _deviation(db32: Path, db16: Path) -> dict[str, float]:
    """max |bf16 - fp32| over the images both caches hold: decision logit, confidence, class logits."""
    import numpy as np

    from faramir.store.cache import Cache
    from faramir.store.heads import registry

    def load(db):
        cache = Cache.open(db)
        head = registry.columns(cache, "faramir-v1")
        cols = ["id", head.decision, head.confidence, head.logits]
        rows = cache.images().search().select(cols).limit(None).to_arrow().to_pylist()
        return {r["id"]: (r[cols[1]], r[cols[2]], np.array(r[cols[3]])) for r in rows}

    a, b = load(db32), load(db16)
    common = sorted(set(a) & set(b))
    if not common:
        return {}
    return {
        "images": len(common),
        "decision": max(abs(a[i][0] - b[i][0]) for i in common),
        "confidence": max(abs(a[i][1] - b[i][1]) for i in common),
        "class_logits": max(float(np.abs(a[i][2] - b[i][2]).max()) for i in common),
    }


def _small_images(dest: Path, n: int) -> list[Path]:
    """`n` distinct 64x48 PNGs (seeded noise), made once and reused."""
    import numpy as np
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    paths = [dest / f"img{i:06d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            pixels = np.random.default_rng([1234, i]).integers(0, 256, (48, 64, 3), np.uint8)
            Image.fromarray(pixels, "RGB").save(path)
    return paths


def speed(args) -> None:
    import torch

    from bench.images import bench_images

    weights = full_weights(args.weights)
    n_fp32 = args.n if args.n is not None else args.n_fp32
    n_bf16 = args.n if args.n is not None else args.n_bf16
    n_base = args.n if args.n is not None else args.n_baseline
    paths = [str(p) for p in bench_images(max(n_fp32, n_bf16, n_base))]
    devices = ["cpu"]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    common = {"weights": str(weights), "workers": args.workers, "batch_size": args.batch_size}
    rows, deviations = [], {}
    with tempfile.TemporaryDirectory(prefix="faramir-bench-") as tmp:
        for dev in devices:
            scale = args.gpu_scale if dev == "cuda" else 1
            jobs = [
                {"mode": "baseline", "precision": "fp32", "n": n_base},
                {"mode": "fp32", "precision": "fp32", "n": n_fp32 * scale},
                {"mode": "bf16", "precision": "bf16", "n": n_bf16 * scale},
            ]
            for job in jobs:
                more = paths if job["n"] <= len(paths) else [str(p) for p in bench_images(job["n"])]
                job.update(common, device=dev, paths=more[: job["n"]], db=f"{tmp}/{dev}-{job['mode']}")
                rows.append(_run_child(job))
            deviations[dev] = _deviation(Path(f"{tmp}/{dev}-fp32"), Path(f"{tmp}/{dev}-bf16"))
    print(f"\nFARAMIR ingest, full-size generated weights ({weights}), real images, "
          f"batch {args.batch_size}, {os.cpu_count()} cores, torch {torch.__version__}")
    _table(rows)
    for dev, d in deviations.items():
        if d:
            print(f"bf16 vs fp32 on {dev}, {d['images']} images: max |Δ decision logit| = {d['decision']:.4g}, "
                  f"max |Δ confidence| = {d['confidence']:.4g}, max |Δ class logit| = {d['class_logits']:.4g}")


def memory(args) -> None:
    from faramir.fake_weights import generate

    sizes = [int(s) for s in args.memory_sizes.split(",")]
    small = Path(args.small_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="faramir-bench-mem-") as tmp:
        weights = generate(Path(tmp) / "tiny", "tiny", 0)
        for n in sizes:
            folder = small / f"{n}"
            _small_images(folder, n)
            job = {"mode": f"tiny-{n}", "precision": "fp32", "device": "cpu", "weights": str(weights),
                   "workers": args.workers, "batch_size": args.batch_size, "db": f"{tmp}/db-{n}",
                   "paths": [str(folder)]}
            row = _run_child(job)
            row["done"] = row["done"] or n
            rows.append(row)
    print(f"\nFARAMIR ingest memory, tiny generated weights, small generated images, batch {args.batch_size}")
    _table(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="images for every mode (overrides the three below)")
    parser.add_argument("--n-baseline", type=int, default=8)
    parser.add_argument("--n-fp32", type=int, default=8)
    parser.add_argument("--n-bf16", type=int, default=16)
    parser.add_argument("--gpu-scale", type=int, default=32, help="on CUDA, ingest this many times more images")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="full-size weights (generated if absent)")
    parser.add_argument("--device", default="auto", help="auto (CPU, and CUDA if present), cpu or cuda")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: spare cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory", action="store_true", help="the tiny-model memory check instead")
    parser.add_argument("--memory-sizes", default="1000,10000")
    parser.add_argument("--small-dir", default=str(Path(tempfile.gettempdir()) / "faramir-bench-small"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
    elif args.memory:
        memory(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
