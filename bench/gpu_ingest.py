"""Stage one end to end on a GPU: images/s of `faramir ingest`, the GPU's utilisation, where the time goes.

Usage: python bench/gpu_ingest.py [--n 2000] [--decode faithful,fast] [--precision bf16] [--batch-size 64]
                                  [--workers N] [--device auto] [--weights DIR] [--images DIR] [--compile] [--json]

One command for a GPU machine: N real Debian artwork images (bench/images.py, fetched with apt on
first use; or every image under --images DIR), full-size weights (generated on first use unless
--weights names real ones; speed does not depend on the values), each decode mode in a fresh
process ingesting into a fresh cache, as `faramir ingest --precision bf16 --batch-size 64` does.
Per mode it prints:

- images/s: new images over the ingest's compute time (model loading excluded, timed apart);
- the experts alone on random inputs of the same batch size: the ceiling the feeding side has to keep up with;
- the GPU's utilisation, sampled every 0.25 s by nvidia-smi (or torch.cuda.utilization) while the
  ingest computes: mean and median;
- where the model thread's time went: waiting for decoded batches (the feeding side is too slow),
  for the device (the GPU is the bottleneck: what is wanted), for the writer, and the rest (its
  own work: launching, accounting);
- the CPU time of the process and of its decode workers, per image.

On a machine without a GPU it runs on the CPU (for a quick check that everything works: use a
small --n); the utilisation is then "n/a".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class GpuSampler:
    """GPU utilisation (%) sampled in the background: nvidia-smi's own loop, else torch's query."""

    def __init__(self, index: int, period_s: float = 0.25):
        self.samples: list[tuple[float, float]] = []  # (monotonic time, utilisation %)
        self.source = "n/a"
        self.stopped = threading.Event()
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", str(int(period_s * 1000))], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source = "nvidia-smi"
            self.thread = threading.Thread(target=self._read, daemon=True)
        else:
            self.source = "torch.cuda.utilization"
            self.thread = threading.Thread(target=self._poll, args=(index, period_s), daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.strip())))
            except ValueError:
                pass

    def _poll(self, index: int, period_s: float) -> None:
        import torch

        while not self.stopped.wait(period_s):
            try:
                self.samples.append((time.monotonic(), float(torch.cuda.utilization(index))))
            except Exception:  # noqa: BLE001 - no NVML: no samples
                self.source = "n/a"
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        self.thread.join(timeout=2)

    def between(self, start: float, end: float) -> list[float]:
        return [u for t, u in self.samples if start <= t <= end]


def cpu_seconds(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def experts_alone(model, batch_size: int, precision: str, reps: int = 5) -> float:
    """Images/s of the experts and head alone on random inputs (synchronised on a GPU)."""
    import torch

    cfg = model.info.config
    xb = torch.rand(batch_size, 3, cfg.backbone_res, cfg.backbone_res).half()
    xq = torch.rand(batch_size, 3, cfg.quality_res, cfg.quality_res).half()
    if model.device.type == "cuda":
        xb, xq = xb.pin_memory(), xq.pin_memory()

    def once():
        model.score(model.features(xb, xq, precision)).cpu()

    once()
    started = time.perf_counter()
    for _ in range(reps):
        once()
    return batch_size * reps / (time.perf_counter() - started)


def child(job: dict) -> dict:
    """One decode mode in this (fresh) process."""
    import torch

    from faramir.decoding import default_workers
    from faramir.devices import resolve_device
    from faramir.store.ingestion import IngestPlan, IngestProgress, IngestSummary, ingest
    from faramir.weights import load_model

    device = resolve_device(job["device"])
    started = time.perf_counter()
    model = load_model(job["weights"], device, job["precision"])
    if job["compile"]:
        from faramir.compiled import compile_experts

        compile_experts(model, job["batch_size"])
    load_s = time.perf_counter() - started
    ceiling = experts_alone(model, job["batch_size"], job["precision"])
    sampler = GpuSampler(device.index or 0) if device.type == "cuda" else None
    cpu_self, cpu_children = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="faramir-gpu-ingest-") as tmp:
        begun = first = last = time.monotonic()
        for event in ingest(job["paths"], db=Path(tmp) / "db", model=model, precision=job["precision"],
                            batch_size=job["batch_size"], workers=job["workers"], decode=job["decode"]):
            if isinstance(event, IngestPlan):
                first = time.monotonic()  # the files are read from here on
            elif isinstance(event, IngestProgress):
                last = time.monotonic()
            elif isinstance(event, IngestSummary):
                s = event
        ended = time.monotonic()
    cpu_self = cpu_seconds(resource.RUSAGE_SELF) - cpu_self
    cpu_children = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_children
    utilisation = []
    if sampler is not None:
        sampler.stop()
        utilisation = sampler.between(first, last)  # from the first file read to the last batch

    waits = s.waits
    own = max(s.compute_s - sum(waits.values()), 0.0)
    return {
        "decode": job["decode"], "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": job["precision"], "batch_size": job["batch_size"],
        "decode_workers": job["workers"] if job["workers"] is not None else default_workers(device.type),
        "cores": len(os.sched_getaffinity(0)), "images": s.new, "duplicates": s.duplicate, "failed": s.failed,
        "images_per_s": s.images_per_s, "compute_s": s.compute_s, "elapsed_s": s.elapsed_s,
        "model_load_s": load_s, "experts_alone_images_per_s": ceiling,
        "gpu_utilisation_mean": statistics.fmean(utilisation) if utilisation else None,
        "gpu_utilisation_median": statistics.median(utilisation) if utilisation else None,
        "gpu_samples": len(utilisation), "gpu_sampler": sampler.source if sampler else "n/a",
        "waiting_for_decoding_s": waits.get("decoding", 0.0), "waiting_for_device_s": waits.get("device", 0.0),
        "waiting_for_writer_s": waits.get("writer", 0.0), "own_work_s": own,
        "cpu_ms_per_image_process": cpu_self / max(s.new, 1) * 1e3,
        "cpu_ms_per_image_decode_workers": cpu_children / max(s.new, 1) * 1e3,
        "wall_s_from_start": ended - begun, "machine": _machine(),
    }


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def run_child(job: dict) -> dict:
    print(f"  ingesting {len(job['paths'])} images, --decode {job['decode']}, on {job['device']}...",
          file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)  # thousands of paths: too long for one argument
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", f.name], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise SystemExit(f"--decode {job['decode']} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> None:
    first = rows[0]
    print(f"\nfaramir ingest on {first['gpu'] or first['device']}, {first['cores']} cores "
          f"({first['decode_workers']} decode workers), {first['precision']}, batch {first['batch_size']}, "
          f"{first['images']} new images")
    for r in rows:
        util = (f"{r['gpu_utilisation_mean']:.0f}% mean, {r['gpu_utilisation_median']:.0f}% median "
                f"({r['gpu_samples']} samples, {r['gpu_sampler']})" if r["gpu_utilisation_mean"] is not None
                else "n/a")
        c = r["compute_s"] or 1.0
        print(f"--decode {r['decode']}: {r['images_per_s']:.1f} images/s (the experts alone: "
              f"{r['experts_alone_images_per_s']:.1f}); GPU utilisation {util}")
        print(f"  the model thread's {r['compute_s']:.1f} s: waiting for decoded batches "
              f"{r['waiting_for_decoding_s'] / c:.0%}, for the device {r['waiting_for_device_s'] / c:.0%}, "
              f"for the writer {r['waiting_for_writer_s'] / c:.0%}, its own work {r['own_work_s'] / c:.0%}")
        print(f"  CPU per image: {r['cpu_ms_per_image_decode_workers']:.1f} ms in the decode workers, "
              f"{r['cpu_ms_per_image_process']:.1f} ms in the process; model load {r['model_load_s']:.1f} s, "
              f"whole run {r['elapsed_s']:.1f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--decode", default="faithful,fast", help="decode modes, one run each")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: ingest's, cores - 1 on a GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default=None, help="full-size weights (generated if absent)")
    ap.add_argument("--images", default=None, help="a folder of images instead of Debian's artwork")
    ap.add_argument("--compile", action="store_true", help="compile the experts first (timed with the load)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line per decode mode")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(Path(args.child).read_text()))))
        return

    from bench.full_weights import DEFAULT_WEIGHTS, full_weights
    from bench.images import bench_images
    from faramir.sources import discover

    weights = full_weights(args.weights or DEFAULT_WEIGHTS)
    if args.images:
        paths = [s.path for s in discover([args.images], True, None)][:args.n]
    else:
        paths = [str(p) for p in bench_images(args.n)]
    if len(paths) < args.n:
        print(f"only {len(paths)} images found (asked for {args.n})", file=sys.stderr)
    for p in paths:
        Path(p).read_bytes()  # into the page cache: every mode reads them alike
    rows = []
    for mode in args.decode.split(","):
        rows.append(run_child({"decode": mode, "device": args.device, "weights": str(weights), "paths": paths,
                               "precision": args.precision, "batch_size": args.batch_size,
                               "workers": args.workers, "compile": args.compile}))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        table(rows)


if __name__ == "__main__":
    main()
