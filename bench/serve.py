"""The gallery's server time at scale: what the page asks for, timed through the app in process.

    python bench/serve.py                    # 1M rows under /tmp/faramir-bench (built once, reused)
    python bench/serve.py --rows 100000 --reps 30

Uses the synthetic cache of bench/stage_two.py (same folder, same seed: one build serves both),
with its scalar indexes and the ANN index (built here if missing). Each figure is the time of
the HTTP request through FastAPI's test client into `faramir.gallery.app` (routing, validation, the
`store` call, JSON), p50 and p95 over `--reps` requests with varying parameters; thumbnails are
excluded (the synthetic rows have no image files). Targets from issue 10:

- first grid page (60 tiles, confidence order), target <= 200 ms;
- the next page by keyset cursor (no target; shows pages stay cheap deep into the order);
- a threshold change: counts and the first page at the new threshold, target <= 150 ms;
- "similar accepted": the 48 nearest accepted images to a cached one, target <= 100 ms;
- a label write by content id, target <= 50 ms.

The labels written are removed at the end. Tests never assert on timings; this only prints them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS_MS = {"first page": 200, "next page": None, "threshold change": 150, "similar accepted": 100,
              "label write": 50}


def ensure_cache(n: int, root: Path) -> Path:
    from bench.stage_two import build
    from faramir.store.cache import Cache
    from faramir.store.vectors.indexes import ensure_indexes, index

    db, workdir = root / f"cache-{n}", root / f"work-{n}"
    t0 = time.perf_counter()
    if build(n, db, workdir) is not None:
        print(f"built {n:,} synthetic rows in {time.perf_counter() - t0:.0f} s", flush=True)
    cache = Cache.open(db)
    if not any("faramir_embedding" in ix.columns for ix in cache.images().list_indices()):
        t0 = time.perf_counter()
        index(cache)
        print(f"built the ANN index in {time.perf_counter() - t0:.0f} s", flush=True)
    ensure_indexes(cache)
    return db


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(db: Path, reps: int) -> dict[str, list[float]]:
    from fastapi.testclient import TestClient

    from faramir.gallery.app import create_app

    app = create_app(db, work=db.parent / f"{db.name}.gallery-bench")
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    headers = {"X-Faramir-Token": app.state.token}

    def get(path, **params):
        r = client.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    rng = np.random.default_rng(0)
    thresholds = [round(float(t), 2) for t in rng.uniform(0.2, 0.8, reps)]
    get("/api/grid", threshold=0.5, limit=60)  # warm: open the dataset, load the indexes
    get("/api/counts", threshold=0.5)
    times: dict[str, list[float]] = {k: [] for k in TARGETS_MS}
    cursors = []
    for t in thresholds:
        page = {}
        times["first page"].append(timed(lambda: page.update(get("/api/grid", threshold=0.5, limit=60, head="faramir-v1",
                                                                 show=("all", "accepted")[len(cursors) % 2]))))
        cursors.append(page["next"])
    for cursor in cursors:
        times["next page"].append(timed(lambda: get("/api/grid", threshold=0.5, limit=60, after=cursor)))
    for t in thresholds:
        times["threshold change"].append(timed(lambda: (get("/api/counts", threshold=t),
                                                        get("/api/grid", threshold=t, limit=60))))
    ids = [r["id"] for r in get("/api/grid", threshold=0.5, limit=200)["rows"]]
    refs = [ids[i] for i in rng.choice(len(ids), reps, replace=False)] if len(ids) >= reps else ids
    get(f"/api/similar/{refs[0]}", threshold=0.5, show="accepted", k=48)  # warm the ANN index
    for ref in refs:
        times["similar accepted"].append(timed(lambda: get(f"/api/similar/{ref}", threshold=0.5, show="accepted",
                                                           k=48)))
    written = []
    for n, ref in enumerate(refs):
        label = ("accept", "reject", "2d_fantasy")[n % 3]

        def write():
            r = client.post("/api/labels", json={"ids": [ref], "label": label}, headers=headers)
            assert r.status_code == 200, r.text

        times["label write"].append(timed(write))
        written.append(ref)
    client.post("/api/labels", json={"ids": written, "label": None}, headers=headers)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--reps", type=int, default=40, help="requests per operation (default 40)")
    args = parser.parse_args()
    db = ensure_cache(args.rows, args.dir)
    times = measure(db, args.reps)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; {args.rows:,} rows; {args.reps} requests each")
    print("| request (server time, in process) | p50 ms | p95 ms | target ms |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ms = 1000 * np.asarray(values)
        target = TARGETS_MS[name]
        print(f"| {name} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 95):.1f} | "
              f"{'-' if target is None else f'<= {target}'} |")


if __name__ == "__main__":
    main()
