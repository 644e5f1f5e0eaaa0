"""Near-duplicate search at scale: recall of planted pairs, precision, wall time and peak RSS.

    python bench/duplicates.py                      # 100K and 1M rows under /tmp/faramir-bench
    python bench/duplicates.py --rows 100000 --dir /data/bench

Builds (once, then reuses) a cache of the real schema (full size: 1152-d embeddings) from
`bench.synthetic`'s clustered generator (seed 0), then plants near-duplicates: for 1% of the rows
(chosen at random, each at most once) a copy whose SigLIP and FARAMIR embeddings are rotated to an
exact cosine with the original, drawn uniformly from

- [threshold, 0.999] for two thirds of them (pairs that must be found), and
- [threshold − 0.05, threshold − 0.002] for the rest (near misses that must not be paired).

Copies keep the original's scores. `faramir.store.near_duplicates` then runs in a fresh process,
reporting wall seconds, CPU seconds and the process's peak RSS, and the result is checked:

- recall: planted pairs at or above the threshold that share a group;
- precision: group members that have another member of their group at cosine ≥ threshold,
  recomputed here in float64 (the library verifies every edge; this checks that it does);
- near misses grouped: planted pairs below the threshold that share a group (a chain through
  other rows could do it legitimately; none is expected in this data).

Tests never assert on timings; this script only prints them. On a loaded machine wall time grows;
CPU seconds say more.
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
PLANT_SEED = 7
PLANTED_FRACTION = 0.01
THRESHOLD = 0.95


# -- building -------------------------------------------------------------------------------------


def _rotated(x: np.ndarray, cosine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vectors at exactly `cosine` (per row) from the rows of `x`, with the same norms."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / norm
    u = rng.standard_normal(x.shape)
    u -= (u * unit).sum(1, keepdims=True) * unit  # orthogonal to the original
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    c = cosine[:, None]
    return ((c * unit + np.sqrt(1.0 - c ** 2) * u) * norm).astype(np.float32)


def build(n: int, db: Path, threshold: float) -> float | None:
    """A cache of `n` rows: n − planted from the generator, `planted` copies at known cosines."""
    import pyarrow as pa

    from bench.synthetic import write_cache
    from faramir.config import FULL
    from faramir.store.cache import Cache

    marker = db / "bench.json"
    spec = {"rows": n, "seed": SEED, "plant_seed": PLANT_SEED, "threshold": threshold}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return None
    shutil.rmtree(db, ignore_errors=True)
    t0 = time.perf_counter()
    planted = int(n * PLANTED_FRACTION)
    write_cache(db, n - planted, FULL, seed=SEED, batch_rows=50_000)
    cache = Cache.open(db)
    ds = cache.dataset()
    rng = np.random.default_rng(PLANT_SEED)
    sources = np.sort(rng.choice(n - planted, planted, replace=False))
    found = planted * 2 // 3
    cosine = np.concatenate([rng.uniform(threshold, 0.999, found),
                             rng.uniform(threshold - 0.05, threshold - 0.002, planted - found)])
    pairs = []
    for lo in range(0, planted, 20_000):
        rows = ds.take(sources[lo:lo + 20_000])
        c = cosine[lo:lo + len(rows)]
        ids = [f"{'f' * 8}{i:056d}" for i in range(lo, lo + len(rows))]
        for name in ("siglip_embedding", "faramir_embedding"):
            x = rows.column(name).combine_chunks().values.to_numpy().reshape(len(rows), -1).astype(np.float64)
            rows = rows.set_column(rows.schema.get_field_index(name), name, pa.FixedSizeListArray.from_arrays(
                pa.array(_rotated(x, c, rng).reshape(-1)), x.shape[1]))
        paths = [[f"/planted/{i:08d}.png"] for i in range(lo, lo + len(rows))]
        pairs += list(zip(rows.column("id").to_pylist(), ids, c.tolist()))
        rows = rows.set_column(rows.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
        rows = rows.set_column(rows.schema.get_field_index("paths"), "paths",
                               pa.array(paths, pa.list_(pa.string())))
        cache.images().add(rows)
    (db.parent / f"{db.name}-pairs.json").write_text(json.dumps(pairs))
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps(spec))
    return seconds


# -- one measurement in a fresh process -----------------------------------------------------------


def measure(db: str, threshold: float) -> dict:
    from faramir.store.near_duplicates.groups import duplicates

    wall0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    found = duplicates(db, threshold=threshold)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    members = found.table.select(["group", "id"]).to_pylist()
    return {"wall_s": wall, "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
            "peak_rss_gb": peak_rss_mb() / 1024, "rows": found.rows, "groups": found.groups,
            "candidates": found.candidates, "edges": found.edges, "cut": found.cut,
            "members": members}


def check(db: Path, result: dict, threshold: float) -> dict:
    """Recall of planted pairs, precision of the groups (recomputed here), near misses grouped."""
    from faramir.store.cache import Cache

    pairs = json.loads((db.parent / f"{db.name}-pairs.json").read_text())
    group = {m["id"]: m["group"] for m in result["members"]}
    above = [(a, b) for a, b, c in pairs if c >= threshold]
    below = [(a, b) for a, b, c in pairs if c < threshold]
    together = lambda a, b: a in group and group.get(a) == group.get(b)  # noqa: E731
    recall = sum(together(a, b) for a, b in above) / max(1, len(above))
    near_misses = sum(together(a, b) for a, b in below)
    # Precision: every member needs a partner in its group at cosine ≥ threshold.
    ds = Cache.open(db).dataset()
    ids = list(group)
    justified = 0
    by_group: dict[int, list[str]] = {}
    for image_id, g in group.items():
        by_group.setdefault(g, []).append(image_id)
    quoted = lambda i: "'" + i + "'"  # noqa: E731
    for lo in range(0, len(ids), 2000):
        chunk_groups = {group[i] for i in ids[lo:lo + 2000]}
        chunk = [i for g in chunk_groups for i in by_group[g]]
        rows = ds.to_table(columns=["id", "siglip_embedding", "paths"],
                           filter=f"id IN ({', '.join(quoted(i) for i in chunk)})")
        x = rows.column("siglip_embedding").combine_chunks().values.to_numpy().reshape(len(rows), -1)
        x = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
        row_ids = rows.column("id").to_pylist()
        n_paths = [len(p) for p in rows.column("paths").to_pylist()]
        g = np.array([group[i] for i in row_ids])
        s = x @ x.T
        np.fill_diagonal(s, -1.0)
        ok = ((s >= threshold) & (g[:, None] == g[None, :])).any(1) | (np.array(n_paths) > 1)
        wanted = set(ids[lo:lo + 2000])
        justified += sum(bool(o) for i, o in zip(row_ids, ok) if i in wanted)
    precision = justified / max(1, len(ids))
    return {"recall": recall, "precision": precision, "near_misses_grouped": near_misses,
            "planted_above": len(above), "planted_below": len(below), "grouped_images": len(ids)}


def run_child(db: Path, threshold: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", "--db", str(db), "--threshold", str(threshold)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"duplicates failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(n: int, root: Path, threshold: float) -> dict:
    db = root / f"dup-{n}"
    print(f"\n== {n:,} rows: {db}", flush=True)
    built = build(n, db, threshold)
    if built is not None:
        print(f"built in {built:.0f} s", flush=True)
    result = run_child(db, threshold)
    result.update(check(db, result, threshold))
    result.pop("members")
    print(f"  {json.dumps(result)}", flush=True)
    return {"rows_total": n, **result}


def report(all_results: list[dict], threshold: float) -> None:
    print("\nMachine:", platform.processor() or platform.machine(), f"{os.cpu_count()} cores,",
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"threshold {threshold} on the SigLIP embedding (1152-d); planted pairs: 1% of rows")
    print("| rows | wall s | cpu s | peak RSS GB | recall (planted ≥ S) | precision | near misses grouped "
          "| groups | candidates / edges | rows with probes cut |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in all_results:
        print(f"| {r['rows_total']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} "
              f"| {r['recall']:.4f} ({r['planted_above']:,}) | {r['precision']:.4f} "
              f"| {r['near_misses_grouped']} of {r['planted_below']:,} | {r['groups']:,} "
              f"| {r['candidates']:,} / {r['edges']:,} | {r['cut']:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.db, args.threshold)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    report([bench(n, args.dir, args.threshold) for n in args.rows], args.threshold)


if __name__ == "__main__":
    main()
