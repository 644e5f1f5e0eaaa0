"""Stage one on Ray against the local ingest: `faramir ingest --ray local` vs `faramir ingest`.

Both ingest the same generated images (64x48 PNGs) into a fresh cache each, each run in its own
process; with `--repeat` the two alternate, so a machine busy with other work slows both alike.
Columns:

    whole s    the whole run: model loading, Ray's start (for ray), reading, the experts,
               commits, compaction and indexes (what a user waits for)
    ray start  of which starting the local Ray instance (`ray.init`)
    images/s   images over the whole run
    vs local   images/s over the local ingest's in the same round (target: ray >= 0.75x)

Ray's fixed costs (its start, its worker processes, a model load per actor: 20-30 s on a busy
2-core machine) weigh less the more images there are.

    python bench/ray_ingest.py                      # 2,000 images, tiny generated weights, CPU
    python bench/ray_ingest.py --n 200              # a quick check that everything runs
    python bench/ray_ingest.py --repeat 3           # three alternating rounds
    python bench/ray_ingest.py --weights ~/.cache/faramir/bench-weights-full --device auto --n 20000
                                                    # full size on a GPU machine (Ray: one actor per GPU)
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

from bench.ingest import _small_images  # noqa: E402


def _child(job: dict) -> dict:
    from faramir.store.ingestion import ingest_all

    started = time.monotonic()
    ray_start = 0.0
    if job["ray"]:
        from faramir.store.ingestion.ray_cluster import connect

        connect(job["ray"])  # what the ingest would do first; timed apart, then used by it
        ray_start = time.monotonic() - started
    summary = ingest_all([job["folder"]], db=job["db"], weights_dir=job["weights"], device=job["device"],
                         batch_size=job["batch_size"], ray=job["ray"])
    return {"mode": job["mode"], "device": job["device"], "images": summary.new,
            "whole_s": time.monotonic() - started, "ray_start_s": ray_start}


def _run_child(job: dict) -> dict:
    print(f"  {job['mode']} over {job['n']} images...", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"{job['mode']} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> None:
    head = ("round", "mode", "device", "images", "whole s", "ray start s", "images/s", "vs local")
    lines = [head]
    for r in rows:
        local = next(x for x in rows if x["round"] == r["round"] and x["mode"] == "local")
        ips, local_ips = r["images"] / r["whole_s"], local["images"] / local["whole_s"]
        lines.append((str(r["round"]), r["mode"], r["device"], str(r["images"]), f"{r['whole_s']:.1f}",
                      f"{r['ray_start_s']:.1f}" if r["ray_start_s"] else "-", f"{ips:.2f}",
                      f"{ips / local_ips:.2f}x"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images (default 2,000)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds of local and ray")
    parser.add_argument("--weights", help="weights directory (default: tiny generated weights)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--small-dir", default=str(Path(tempfile.gettempdir()) / "faramir-bench-small"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    import torch

    folder = Path(args.small_dir) / f"{args.n}"
    _small_images(folder, args.n)
    rows = []
    with tempfile.TemporaryDirectory(prefix="faramir-bench-ray-") as tmp:
        weights = args.weights
        if weights is None:
            from faramir.fake_weights import generate

            weights = str(generate(Path(tmp) / "tiny", "tiny", 0))
        for round_ in range(1, args.repeat + 1):
            for mode, ray in (("local", None), ("ray", "local")):
                job = {"mode": mode, "ray": ray, "n": args.n, "folder": str(folder), "weights": weights,
                       "device": args.device, "batch_size": args.batch_size,
                       "db": f"{tmp}/db-{mode}-{round_}"}
                rows.append({**_run_child(job), "round": round_})
    print(f"\nFARAMIR ingest, local vs --ray local: {args.n} generated 64x48 PNGs, weights "
          f"{args.weights or 'tiny (generated)'}, batch {args.batch_size}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")
    _table(rows)


if __name__ == "__main__":
    main()
