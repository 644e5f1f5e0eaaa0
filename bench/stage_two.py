"""Stage two at scale: rescore, threshold counts, filtered top-N and filtered nearest neighbours.

    python bench/stage_two.py                       # 100K and 1M rows under /tmp/faramir-bench
    python bench/stage_two.py --rows 100000 --dir /data/bench --queries 100

Builds (once, then reuses) a cache of the real schema (full-size config: 1152-d embeddings) with
N synthetic rows from `tests.synthetic` (seed 0), then measures each operation in a fresh
process, reporting wall seconds, CPU seconds (user + sys) and the process's peak RSS:

- rescore: every row with a new head (same pool, other weights), `store.rescore`;
- count: rows accepted at a new threshold, `store.count` (median over 20 thresholds);
- top100: the best 100 by confidence under a one-label filter, `store.top` (median over labels);
- nearest-10 accepted: `store.similar(k=10, accepted=True)` from 100 query rows, p50/p95
  latency and recall@10 against exact filtered search (brute force in NumPy over the rows that
  pass, checked against LanceDB's own exact search), without and with the ANN index.

How the synthetic embeddings are made (tests.synthetic): unit vectors around a few thousand
cluster centres (min(3000, N/100), Zipf-like sizes), centres sharing a common direction (cosine
about 0.25 between centres), rows at cosine 0.65-0.9 from their centre with noise whose variance
decays by rank (∝ 1/rank over a random permutation of dimensions). Isotropic random vectors have
no neighbourhood structure and make every ANN index look broken; these do not. The head's
decision bias is calibrated so confidences spread over (0, 1) (about 45% accepted at 0.5).

Tests never assert on timings; this script only prints them. CPU ≈ 2 × wall on this 2-core
machine means compute-bound on both cores; sys time close to user time means page faults and
copies (memory bandwidth); wall well above CPU means waiting on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the faramir command does, before LanceDB or torch start threads

from bench.memory import peak_rss_mb  # noqa: E402

SEED = 0
QUERY_SEED = 1
THRESHOLD = 0.5
TOP_LABELS = ("2d_human", "3d_scene", "3d_wireframe", "degraded", "2d_fantasy")


# -- one measurement per process ------------------------------------------------------------------


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime


def _done(start: tuple[float, float], **extra) -> dict:
    wall, cpu = _usage()
    return {"wall_s": wall - start[0], "cpu_s": cpu - start[1],
            "peak_rss_gb": peak_rss_mb() / 1024, **extra}


def measure(op: str, db: str, workdir: Path, queries: int) -> dict:
    from store.db import Cache

    if op == "baseline":  # imports and an open cache: what every other figure includes
        start = _usage()
        import store.indexes, store.neighbours, store.query, store.rescoring  # noqa: E401, F401

        Cache.open(db).images().count_rows()
        return _done(start)
    if op == "rescore":
        from store import rescore

        checkpoint = workdir / "new-head.pth"
        start = _usage()
        record = rescore(checkpoint, "bench-new", db=db, index=False)
        return _done(start, rows=record.rows)
    cache = Cache.open(db)
    if op == "count":
        from store import count

        count(cache, threshold=0.42, accepted=True)  # warm: open the dataset once
        times = []
        for t in np.linspace(0.2, 0.8, 20):
            t0 = time.perf_counter()
            count(cache, threshold=float(t), accepted=True)
            times.append(time.perf_counter() - t0)
        return {"median_s": float(np.median(times)), "max_s": float(np.max(times)),
                "peak_rss_gb": peak_rss_mb() / 1024}
    if op == "top":
        from store import top

        top(cache, labels=["text"], limit=100)
        times = []
        for label in TOP_LABELS * 2:
            t0 = time.perf_counter()
            rows = top(cache, labels=[label], threshold=THRESHOLD, limit=100)
            times.append(time.perf_counter() - t0)
        return {"median_s": float(np.median(times)), "max_s": float(np.max(times)), "rows": len(rows),
                "peak_rss_gb": peak_rss_mb() / 1024}
    if op in ("nearest", "nearest-exact"):
        from store import similar

        data = np.load(workdir / "queries.npz", allow_pickle=True)
        vectors, truth = data["vectors"], data["truth"]
        n = min(queries, len(vectors))
        similar(vectors[0], cache, k=10, accepted=True, exact=op == "nearest-exact")  # warm
        times, recall = [], []
        for q in range(n):
            t0 = time.perf_counter()
            rows = similar(vectors[q], cache, k=10, accepted=True, threshold=THRESHOLD,
                           exact=op == "nearest-exact")
            times.append(time.perf_counter() - t0)
            recall.append(len(set(rows.column("id").to_pylist()) & set(truth[q])) / 10)
        return {"p50_s": float(np.percentile(times, 50)), "p95_s": float(np.percentile(times, 95)),
                "recall": float(np.mean(recall)), "queries": n,
                "peak_rss_gb": peak_rss_mb() / 1024}
    if op == "index":
        from store import index

        start = _usage()
        index(cache)
        return _done(start)
    raise SystemExit(f"unknown op {op}")


def run_child(op: str, db: Path, workdir: Path, queries: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", op, "--db", str(db), "--workdir", str(workdir),
         "--queries", str(queries)],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{op} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- building the cache and the ground truth ------------------------------------------------------


def build(n: int, db: Path, workdir: Path) -> float | None:
    from faramir.config import FULL
    from tests.synthetic import random_checkpoint, save_checkpoint, write_cache

    marker = db / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"rows": n, "seed": SEED}:
        return None
    shutil.rmtree(db, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_cache(db, n, FULL, seed=SEED, batch_rows=50_000)
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps({"rows": n, "seed": SEED}))
    # The new head for the rescore: other weights, the same attention pool as the cache's.
    save_checkpoint(random_checkpoint(FULL, seed=SEED + 5, pool_seed=SEED + 1000), workdir / "new-head.pth")
    return seconds


def ground_truth(db: Path, workdir: Path, queries: int) -> None:
    """Query vectors (rows of the cache) and their exact 10 nearest accepted rows, by brute force."""
    from store.db import Cache

    path = workdir / "queries.npz"
    if path.is_file() and len(np.load(path)["vectors"]) >= queries:
        return
    cache = Cache.open(db)
    ds = cache.dataset()
    prefix = cache.head("faramir-v1")["prefix"]
    n = ds.count_rows()
    rows = np.sort(np.random.default_rng(QUERY_SEED).choice(n, queries, replace=False))
    q = ds.take(rows, columns=["faramir_embedding"]).column("faramir_embedding")
    vectors = q.combine_chunks().values.to_numpy().reshape(queries, -1)
    qn = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    best_s = np.full((queries, 10), -np.inf)
    best_id = np.empty((queries, 10), object)
    for batch in ds.to_batches(columns=["id", "faramir_embedding", f"{prefix}_confidence"], batch_size=32768):
        keep = np.nonzero(batch.column(2).to_numpy() > np.float32(THRESHOLD))[0]
        x = batch.column(1).values.to_numpy().reshape(batch.num_rows, -1)[keep].astype(np.float64)
        s = qn @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        ids = np.asarray(batch.column(0).to_pylist(), object)[keep]
        all_s = np.concatenate([best_s, s], axis=1)
        all_id = np.concatenate([best_id, np.broadcast_to(ids, (queries, len(ids)))], axis=1)
        top = np.argpartition(-all_s, 10, axis=1)[:, :10]
        best_s, best_id = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_id, top, 1)
    np.savez(path, vectors=vectors, truth=best_id)


def drop_ann(db: Path) -> None:
    from store.db import Cache
    from store.indexes import ensure_indexes

    cache = Cache.open(db)
    table = cache.images()
    for ix in table.list_indices():
        if "embedding" in ",".join(ix.columns):
            table.drop_index(ix.name)
    ensure_indexes(cache, min_rows=10**12)  # the scalar indexes only, as after an ingest


# -- the report -----------------------------------------------------------------------------------


def bench(n: int, root: Path, queries: int, exact_queries: int) -> dict:
    db, workdir = root / f"cache-{n}", root / f"work-{n}"
    print(f"\n== {n:,} rows: {db}", flush=True)
    built = build(n, db, workdir)
    if built is not None:
        print(f"built in {built:.0f} s ({sum(f.stat().st_size for f in db.rglob('*') if f.is_file()) / 1e9:.1f} GB)",
              flush=True)
    ground_truth(db, workdir, queries)
    drop_ann(db)
    results = {"rows": n, "build_s": built}
    for op, q in (("baseline", 0), ("rescore", 0), ("count", 0), ("top", 0), ("nearest-exact", exact_queries),
                  ("index", 0), ("nearest", queries)):
        results[op] = run_child(op, db, workdir, q)
        print(f"  {op}: {json.dumps(results[op])}", flush=True)
    return results


def report(all_results: list[dict]) -> None:
    print("\nMachine:", platform.processor() or platform.machine(), f"{os.cpu_count()} cores,",
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print("| rows | rescore s (cpu s, peak RSS) | count ms | top-100 label ms | nearest-10 accepted, exact: "
          "p50 / p95 ms (recall) | ANN build s | nearest-10 accepted, ANN: p50 / p95 ms (recall@10) |")
    print("|---|---|---|---|---|---|---|")
    for r in all_results:
        rs, c, t, e, ix, a = (r[k] for k in ("rescore", "count", "top", "nearest-exact", "index", "nearest"))
        print(f"| {r['rows']:,} | {rs['wall_s']:.1f} ({rs['cpu_s']:.1f}, {rs['peak_rss_gb']:.2f} GB) "
              f"| {1000 * c['median_s']:.0f} | {1000 * t['median_s']:.0f} "
              f"| {1000 * e['p50_s']:.0f} / {1000 * e['p95_s']:.0f} ({e['recall']:.2f}, n={e['queries']}) "
              f"| {ix['wall_s']:.0f} | {1000 * a['p50_s']:.1f} / {1000 * a['p95_s']:.1f} ({a['recall']:.3f}) |")
    base = all_results[0]["baseline"]["peak_rss_gb"]
    print(f"(peak RSS includes {base:.2f} GB for Python, torch, lancedb and an open cache)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--exact-queries", type=int, default=None,
                        help="queries for exact search (default: 100 up to 100K rows, else 10)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.db, args.workdir, args.queries)))
        return
    results = []
    for n in args.rows:
        exact = args.exact_queries or (100 if n <= 100_000 else 10)
        results.append(bench(n, args.dir, args.queries, exact))
    report(results)


if __name__ == "__main__":
    main()
