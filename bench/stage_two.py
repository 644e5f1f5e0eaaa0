"""Stage two at scale: rescore, threshold counts, filtered top-N and filtered nearest neighbours.

    python bench/stage_two.py                       # 100K and 1M rows under /tmp/faramir-bench
    python bench/stage_two.py --rows 100000 --dir /data/bench --queries 100
    python bench/stage_two.py --rows 1000000 --json # one JSON object per size on stdout

Builds (once, then reuses: the cache directory carries a marker with its row count, seed and
schema version) a cache of the real schema (full-size config: 1152-d embeddings) with N
synthetic rows from `bench.synthetic` (seed 0), its tables compacted as `faramir ingest` leaves
them (1M rows: 1 fragment, not the writer's 20), then measures each operation in a fresh
process, reporting wall seconds, CPU seconds (user + sys) and the process's peak RSS:

- rescore: every row with a new head (same pool, other weights: a new frozen part), from the
  embeddings, `faramir.store.rescore`;
- rescore default malloc: the same with glibc's allocator as it comes (`faramir rescore` tunes it:
  `faramir.cli.allocator`), to show what the tuning gains;
- rescore finetuned: every row with the cache's head with new decision layers (what a finetune
  changes), scored from the head's cached v and f;
- count: rows accepted at a new threshold, `faramir.store.count` (median over 20 thresholds);
- top100: the best 100 by confidence under a one-label filter, `faramir.store.top` (median over labels);
- nearest-10 accepted: `store.similar(k=10, accepted=True)` from 100 query rows in one
  warm process (the Cache keeps the filter's allow-list after the first query, whose time is
  reported apart), p50/p95 latency and recall@10 against exact filtered search (brute force in
  NumPy over the rows that pass), without and with the ANN index;
- nearest CLI: the wall time of a one-shot `faramir similar ID --accepted --k 10` subprocess
  (Python start, imports, opening the cache, the allow-list and the search), median of 5.

How the synthetic embeddings are made (bench.synthetic): unit vectors around a few thousand
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

from bench.memory import peak_rss_mb  # noqa: E402

SEED = 0
QUERY_SEED = 1
THRESHOLD = 0.5
TOP_LABELS = ("2d_human", "3d_scene", "3d_wireframe", "degraded", "2d_fantasy")
CLI_RUNS = 5  # one-shot `faramir similar` processes timed


# -- one measurement per process ------------------------------------------------------------------


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime


def _done(start: tuple[float, float], **extra) -> dict:
    wall, cpu = _usage()
    return {"wall_s": wall - start[0], "cpu_s": cpu - start[1],
            "peak_rss_gb": peak_rss_mb() / 1024, **extra}


def measure(op: str, db: str, workdir: Path, queries: int) -> dict:
    from faramir.store.cache import Cache

    if op == "baseline":  # an open cache (every figure is timed after its imports)
        start = _usage()
        import faramir.store.heads.rescore
        import faramir.store.queries.counting
        import faramir.store.queries.ranking
        import faramir.store.vectors.indexes  # noqa: E401, F401
        import faramir.store.vectors.nearest

        Cache.open(db).images().count_rows()
        return _done(start)
    if op in ("rescore", "rescore-default-malloc", "rescore-finetuned"):
        if op != "rescore-default-malloc":  # as `faramir rescore` does, before Lance starts threads
            from faramir.cli.allocator import keep_freed_memory

            keep_freed_memory()
        import lance  # noqa: E401, F401  (imports are the baseline's, not the operation's)
        import lancedb  # noqa: F401  (a rescore registers its head through LanceDB)

        import faramir.store.heads.scoring  # noqa: F401  (torch)
        from faramir.store import rescore

        checkpoint, name = ((workdir / "finetuned-head.pth", "bench-finetuned") if op == "rescore-finetuned"
                            else (workdir / "new-head.pth", "bench-new"))
        start = _usage()  # the new head from the embeddings, even where an earlier run registered it
        record = rescore(checkpoint, name, db=db, index=False, reuse=op == "rescore-finetuned")
        return _done(start, rows=record.rows, scored_from=record.scored_from)
    cache = Cache.open(db)
    if op == "count":
        from faramir.store import count

        count(cache, threshold=0.42, accepted=True)  # warm: open the dataset once
        times = []
        for t in np.linspace(0.2, 0.8, 20):
            t0 = time.perf_counter()
            count(cache, threshold=float(t), accepted=True)
            times.append(time.perf_counter() - t0)
        return {"median_s": float(np.median(times)), "max_s": float(np.max(times)),
                "peak_rss_gb": peak_rss_mb() / 1024}
    if op == "top":
        from faramir.store import top

        top(cache, labels=["text"], limit=100)
        times = []
        for label in TOP_LABELS * 2:
            t0 = time.perf_counter()
            rows = top(cache, labels=[label], threshold=THRESHOLD, limit=100)
            times.append(time.perf_counter() - t0)
        return {"median_s": float(np.median(times)), "max_s": float(np.max(times)), "rows": len(rows),
                "peak_rss_gb": peak_rss_mb() / 1024}
    if op in ("nearest", "nearest-exact"):
        from faramir.store import similar

        data = np.load(workdir / "queries.npz", allow_pickle=True)
        vectors, truth = data["vectors"], data["truth"]
        n = min(queries, len(vectors))
        t0 = time.perf_counter()  # the first query also finds the rows passing the filter
        similar(vectors[0], cache, k=10, accepted=True, threshold=THRESHOLD, exact=op == "nearest-exact")
        first = time.perf_counter() - t0
        times, recall = [], []
        for q in range(n):
            t0 = time.perf_counter()
            rows = similar(vectors[q], cache, k=10, accepted=True, threshold=THRESHOLD,
                           exact=op == "nearest-exact")
            times.append(time.perf_counter() - t0)
            recall.append(len(set(rows.column("id").to_pylist()) & set(truth[q])) / 10)
        return {"p50_s": float(np.percentile(times, 50)), "p95_s": float(np.percentile(times, 95)),
                "recall": float(np.mean(recall)), "queries": n, "first_s": first,
                "peak_rss_gb": peak_rss_mb() / 1024}
    if op == "nearest-cli":
        from faramir.store import similar

        data = np.load(workdir / "queries.npz", allow_pickle=True)
        ids, truth = data["ids"], data["truth"]
        walls, recall = [], []
        for q in range(min(CLI_RUNS, len(ids))):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", "import sys; from faramir.cli.app import main; sys.argv[0] = 'faramir'; main()",
                 "similar", str(ids[q]), "--db", db, "--accepted", "--threshold", str(THRESHOLD),
                 "--k", "10", "--format", "jsonl"],
                capture_output=True, text=True, check=False, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
            )
            walls.append(time.perf_counter() - t0)
            if out.returncode != 0:
                raise SystemExit(f"faramir similar failed:\n{out.stderr[-3000:]}")
            got = [json.loads(line)["id"] for line in out.stdout.splitlines()]
            recall.append(len(set(got) & set(truth[q])) / 10)
            assert got == similar(str(ids[q]), cache, k=10, accepted=True, threshold=THRESHOLD).column(
                "id").to_pylist(), "the CLI and the library disagree"
        return {"median_s": float(np.median(walls)), "max_s": float(np.max(walls)), "runs": len(walls),
                "recall": float(np.mean(recall))}
    if op == "index":
        from faramir.store import index

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
    from bench.synthetic import random_checkpoint, save_checkpoint, write_cache
    from faramir.config import FULL
    from faramir.store.schema import SCHEMA_VERSION

    marker = db.parent / f"{db.name}.bench.json"  # beside the cache: its folder may hold only its tables
    if (db / "bench.json").is_file() and not marker.is_file():
        (db / "bench.json").replace(marker)  # where an older bench left it (Cache.open refuses such a folder)
    made = {"rows": n, "seed": SEED, "schema": SCHEMA_VERSION}
    found = json.loads(marker.read_text()) if marker.is_file() else {}
    if found.get("rows") == n and found.get("seed") == SEED and found.get("schema", 0) <= SCHEMA_VERSION:
        compact(db)  # a cache built before the bench compacted; opening it migrates an older schema
        marker.write_text(json.dumps(made))
        return None
    shutil.rmtree(db, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)  # query rows and ground truth of the old cache
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cache = write_cache(db, n, FULL, seed=SEED, batch_rows=50_000)
    compact(db)
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps(made))
    # The new head for the rescore: other weights, the same attention pool as the cache's.
    save_checkpoint(random_checkpoint(FULL, seed=SEED + 5, pool_seed=SEED + 1000), workdir / "new-head.pth")
    save_checkpoint(finetuned(cache), workdir / "finetuned-head.pth")
    return seconds


def compact(db: Path) -> None:
    """Lay the tables out as `faramir ingest` leaves them: its end-of-run housekeeping compacts a
    table holding `COMPACT_AT` small fragments (here 1M rows → 1 fragment, not the writer's 20).
    Fragments matter to the queries: a take of 40 rows from 20 fragments costs 4.2 ms, from one
    1.7 ms, and a vector search's refine is such a take."""
    from faramir.store.cache import Cache
    from faramir.store.ingestion.driver import compact_if_due

    cache = Cache.open(db, warn_generated=False)
    for name in cache.table_names():
        compact_if_due(cache.table(name))


def finetuned(cache) -> dict:
    """The cache's head (norm.* + head.*) with its decision layers moved, as a finetune moves them:
    everything else bit-identical."""
    import torch

    from faramir.checkpoints import head_state_from_bytes
    from faramir.config import TRAINED_PREFIXES
    from faramir.store import schema
    from faramir.store.heads import registry

    state = head_state_from_bytes(registry.checkpoint(cache, schema.DEFAULT_HEAD))
    g = torch.Generator().manual_seed(SEED + 7)
    return {k: v * (1 + 0.1 * torch.randn(v.shape, generator=g)) if k.startswith(TRAINED_PREFIXES) else v
            for k, v in state.items()}


def ground_truth(db: Path, workdir: Path, queries: int) -> None:
    """Query vectors (rows of the cache) and their exact 10 nearest accepted rows, by brute force."""
    from faramir.store.cache import Cache
    from faramir.store.heads import registry

    path = workdir / "queries.npz"
    if path.is_file():
        data = np.load(path, allow_pickle=True)
        if "ids" in data and len(data["vectors"]) >= queries:
            return
    cache = Cache.open(db)
    ds = cache.dataset()
    confidence = registry.columns(cache, "faramir-v1").confidence
    n = ds.count_rows()
    rows = np.sort(np.random.default_rng(QUERY_SEED).choice(n, queries, replace=False))
    taken = ds.take(rows, columns=["id", "faramir_embedding"])
    vectors = taken.column("faramir_embedding").combine_chunks().values.to_numpy().reshape(queries, -1)
    qn = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    best_s = np.full((queries, 10), -np.inf)
    best_id = np.empty((queries, 10), object)
    for batch in ds.to_batches(columns=["id", "faramir_embedding", confidence], batch_size=32768):
        keep = np.nonzero(batch.column(2).to_numpy() > np.float32(THRESHOLD))[0]
        x = batch.column(1).values.to_numpy().reshape(batch.num_rows, -1)[keep].astype(np.float64)
        s = qn @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        ids = np.asarray(batch.column(0).to_pylist(), object)[keep]
        all_s = np.concatenate([best_s, s], axis=1)
        all_id = np.concatenate([best_id, np.broadcast_to(ids, (queries, len(ids)))], axis=1)
        top = np.argpartition(-all_s, 10, axis=1)[:, :10]
        best_s, best_id = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_id, top, 1)
    np.savez(path, vectors=vectors, truth=best_id, ids=np.asarray(taken.column("id").to_pylist(), object))


def drop_ann(db: Path) -> None:
    from faramir.store.cache import Cache
    from faramir.store.vectors.indexes import ensure_indexes

    cache = Cache.open(db)
    table = cache.images()
    for ix in table.list_indices():
        if "embedding" in ",".join(ix.columns):
            table.drop_index(ix.name)
    ensure_indexes(cache, min_rows=10**12)  # the scalar indexes only, as after an ingest


# -- the report -----------------------------------------------------------------------------------


def bench(n: int, root: Path, queries: int, exact_queries: int, log) -> dict:
    db, workdir = root / f"cache-{n}", root / f"work-{n}"
    log(f"\n== {n:,} rows: {db}")
    built = build(n, db, workdir)
    if built is not None:
        log(f"built in {built:.0f} s ({sum(f.stat().st_size for f in db.rglob('*') if f.is_file()) / 1e9:.1f} GB)")
    ground_truth(db, workdir, queries)
    drop_ann(db)
    results = {"rows": n, "build_s": built}
    for op, q in (("baseline", 0), ("rescore", 0), ("rescore-default-malloc", 0), ("rescore-finetuned", 0),
                  ("count", 0), ("top", 0),
                  ("nearest-exact", exact_queries), ("index", 0), ("nearest", queries), ("nearest-cli", 0)):
        results[op] = run_child(op, db, workdir, q)
        log(f"  {op}: {json.dumps(results[op])}")
    return results


def summary(r: dict) -> dict:
    """The figures of one size as one flat JSON object (what --json prints)."""
    rs, ft, a, cli = r["rescore"], r["rescore-finetuned"], r["nearest"], r["nearest-cli"]
    return {
        "rows": r["rows"],
        "rescore_s": rs["wall_s"],
        "rescore_peak_rss_gb": rs["peak_rss_gb"],
        "rescore_default_malloc_s": r["rescore-default-malloc"]["wall_s"],
        "rescore_finetuned_s": ft["wall_s"],
        "rescore_finetuned_peak_rss_gb": ft["peak_rss_gb"],
        "rescore_finetuned_from": ft["scored_from"],
        "count_ms": 1000 * r["count"]["median_s"],
        "top100_label_ms": 1000 * r["top"]["median_s"],
        "nearest_exact_p50_ms": 1000 * r["nearest-exact"]["p50_s"],
        "nearest_exact_recall_at_10": r["nearest-exact"]["recall"],
        "ann_build_s": r["index"]["wall_s"],
        "nearest_p50_ms": 1000 * a["p50_s"],
        "nearest_p95_ms": 1000 * a["p95_s"],
        "nearest_first_query_ms": 1000 * a["first_s"],
        "nearest_recall_at_10": a["recall"],
        "nearest_cli_wall_s": cli["median_s"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg()[0],
    }


def report(all_results: list[dict]) -> None:
    print("\nMachine:", platform.processor() or platform.machine(), f"{os.cpu_count()} cores,",
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print("| rows | rescore s (cpu s, peak RSS) | same, default malloc | rescore finetuned s (cpu s, peak RSS) | count ms "
          "| top-100 label ms | nearest-10 accepted, exact: p50 / p95 ms (recall) | ANN build s "
          "| nearest-10 accepted, ANN, warm process: p50 / p95 ms (recall@10; first query ms) "
          "| `faramir similar --accepted` wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in all_results:
        rs, ft, c, t, e, ix, a, cli = (r[k] for k in ("rescore", "rescore-finetuned", "count", "top",
                                                       "nearest-exact", "index", "nearest", "nearest-cli"))
        dm = r["rescore-default-malloc"]
        print(f"| {r['rows']:,} | {rs['wall_s']:.1f} ({rs['cpu_s']:.1f}, {rs['peak_rss_gb']:.2f} GB) "
              f"| {dm['wall_s']:.1f} ({dm['cpu_s']:.1f}, {dm['peak_rss_gb']:.2f} GB) "
              f"| {ft['wall_s']:.2f} ({ft['cpu_s']:.2f}, {ft['peak_rss_gb']:.2f} GB) "
              f"| {1000 * c['median_s']:.0f} | {1000 * t['median_s']:.0f} "
              f"| {1000 * e['p50_s']:.0f} / {1000 * e['p95_s']:.0f} ({e['recall']:.2f}, n={e['queries']}) "
              f"| {ix['wall_s']:.0f} | {1000 * a['p50_s']:.1f} / {1000 * a['p95_s']:.1f} ({a['recall']:.3f}; "
              f"{1000 * a['first_s']:.0f}) | {cli['median_s']:.2f} |")
    if any(r["rescore-finetuned"]["scored_from"] is None for r in all_results):
        print("NOTE: a finetuned rescore ran from the embeddings, not from the base's v and f")
    base = all_results[0]["baseline"]["peak_rss_gb"]
    print(f"(peak RSS includes {base:.2f} GB for Python, torch, lancedb and an open cache)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--exact-queries", type=int, default=None,
                        help="queries for exact search (default: 100 up to 100K rows, else 10)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per size on stdout (progress goes to stderr)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.db, args.workdir, args.queries)))
        return
    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    results = []
    for n in args.rows:
        exact = args.exact_queries or (100 if n <= 100_000 else 10)
        results.append(bench(n, args.dir, args.queries, exact, log))
        if args.json:
            print(json.dumps(summary(results[-1])), flush=True)
    if not args.json:
        report(results)


if __name__ == "__main__":
    main()
