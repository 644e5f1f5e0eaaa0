"""The gallery's server time at scale: what the page asks for, timed through the app in process,
then over a real socket, then the curator's loop from the page.

    python bench/serve.py                    # 1M rows under /tmp/faramir-bench (built once, reused)
    python bench/serve.py --rows 100000 --reps 30
    python bench/serve.py --rows 100000 --json   # one JSON object per measure

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

Over a socket (uvicorn serving `faramir serve`'s listening socket, one kept-alive http.client
connection, as a browser keeps one): a label write and a threshold change, with TCP_NODELAY off
(as `socket.create_server` made it) and on (`faramir.gallery.serving.listening_socket`).
Without it every response waited about 40 ms: uvicorn writes the header and the body apart, and
Nagle's algorithm held the body for the client's delayed ACK.

The loop (target <= 5 s at 1M rows): --loop-labels labels (2,000) written through the gallery
(POST /api/labels, 100 at a time), then the timed part: POST /api/finetune, polling the job every
50 ms until it is done (training, scoring the cache with the new head, evaluating on the labels),
then the first grid page under the new head. The job's own seconds per state are reported too.

The labels and the head written are removed at the end. Tests never assert on timings; this only
prints them.
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
LOOP_HEAD = "bench-loop"


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


class Served:
    """The gallery over `db` served by uvicorn in a thread on a listening socket as `faramir serve`
    makes it (with or without TCP_NODELAY), and one kept-alive HTTP connection to it."""

    def __init__(self, db: Path, nodelay: bool):
        import threading

        import uvicorn

        from faramir.gallery.app import create_app
        from faramir.gallery.serving import listening_socket

        self.app = create_app(db, work=db.parent / f"{db.name}.gallery-bench")
        sock = listening_socket("127.0.0.1", 0, nodelay=nodelay)
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        import http.client

        self.conn = http.client.HTTPConnection("127.0.0.1", self.port)

    def call(self, method: str, path: str, payload=None, **params):
        import json
        from urllib.parse import urlencode

        url = path + ("?" + urlencode(params) if params else "")
        headers = {"Host": f"127.0.0.1:{self.port}"}
        body = None
        if payload is not None:
            body = json.dumps(payload)
            headers |= {"Content-Type": "application/json", "X-Faramir-Token": self.app.state.token,
                        "Origin": f"http://127.0.0.1:{self.port}"}
        self.conn.request(method, url, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        assert response.status == 200, data[:300]
        return json.loads(data)

    def close(self):
        self.conn.close()
        self.server.should_exit = True
        self.thread.join(10)


def over_socket(db: Path, reps: int) -> dict[str, dict[str, float]]:
    """p50 ms of a label write and a threshold change over one kept-alive connection, TCP_NODELAY off and on."""
    out = {}
    for nodelay in (False, True):
        served = Served(db, nodelay)
        try:
            ids = [r["id"] for r in served.call("GET", "/api/grid", threshold=0.5, limit=reps)["rows"]]
            served.call("GET", "/api/counts", threshold=0.5)  # warm
            writes, changes = [], []
            for n, ref in enumerate(ids):
                writes.append(timed(lambda: served.call("POST", "/api/labels", {"ids": [ref], "label": "accept"})))
            for t in np.random.default_rng(1).uniform(0.2, 0.8, reps):
                changes.append(timed(lambda: (served.call("GET", "/api/counts", threshold=round(float(t), 2)),
                                              served.call("GET", "/api/grid", threshold=round(float(t), 2), limit=60))))
            served.call("POST", "/api/labels", {"ids": ids, "label": None})
        finally:
            served.close()
        out[f"TCP_NODELAY {'on' if nodelay else 'off'}"] = {
            "label write p50 ms": 1000 * float(np.median(writes)), "threshold change p50 ms": 1000 * float(np.median(changes))}
    return out


def loop(db: Path, labels: int) -> dict[str, float]:
    """The curator's loop from the page: labels written, then finetune → done → the grid re-ranked."""
    served = Served(db, nodelay=True)
    try:
        ids = _spread_ids(db, labels)
        for i in range(0, len(ids), 100):  # alternate sides: the finetune needs both
            served.call("POST", "/api/labels", {"ids": ids[i:i + 100], "label": ("accept", "reject")[(i // 100) % 2]})
        if LOOP_HEAD in served.call("GET", "/api/info")["heads"]:
            served.call("POST", "/api/heads/discard", {"name": LOOP_HEAD})
        t0 = time.perf_counter()
        job = served.call("POST", "/api/finetune", {"base": "faramir-v1", "name": LOOP_HEAD, "epochs": 20})
        while job["state"] not in ("done", "failed"):
            time.sleep(0.05)
            job = served.call("GET", f"/api/finetune/{job['id']}")
        done = time.perf_counter()
        assert job["state"] == "done", job["error"]
        served.call("GET", "/api/grid", head=LOOP_HEAD, threshold=0.5, limit=60)
        end = time.perf_counter()
        served.call("POST", "/api/heads/discard", {"name": LOOP_HEAD})
        for i in range(0, len(ids), 1000):
            served.call("POST", "/api/labels", {"ids": ids[i:i + 1000], "label": None})
    finally:
        served.close()
    return {"labels": len(ids), "finetune request to done s": done - t0, "then the grid under the new head s": end - done,
            "loop s": end - t0, **{f"job {state} s": s for state, s in job["seconds"].items()}}


def _spread_ids(db: Path, n: int) -> list[str]:
    """`n` ids spread evenly over the table."""
    from faramir.store.cache import Cache

    ds = Cache.open(db).dataset("images")
    rows = np.arange(0, ds.count_rows(), max(1, ds.count_rows() // n))[:n]
    return ds.take(rows, columns=["id"]).column("id").to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--reps", type=int, default=40, help="requests per operation (default 40)")
    parser.add_argument("--loop-labels", type=int, default=2000, help="labels before the loop's finetune (default 2000)")
    parser.add_argument("--json", action="store_true", help="one JSON object per measure")
    args = parser.parse_args()
    db = ensure_cache(args.rows, args.dir)
    times = measure(db, args.reps)
    socket = over_socket(db, args.reps)
    the_loop = loop(db, args.loop_labels)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        import json

        for name, values in times.items():
            ms = 1000 * np.asarray(values)
            print(json.dumps({"measure": name, "rows": args.rows, "p50_ms": float(np.percentile(ms, 50)),
                              "p95_ms": float(np.percentile(ms, 95)), "target_ms": TARGETS_MS[name]}))
        for name, values in socket.items():
            print(json.dumps({"measure": f"over a socket, {name}", "rows": args.rows, **values}))
        print(json.dumps({"measure": "the loop", "rows": args.rows, "machine": machine, **the_loop}))
        return
    print(f"\nMachine: {machine}; {args.rows:,} rows; {args.reps} requests each")
    print("| request (server time, in process) | p50 ms | p95 ms | target ms |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ms = 1000 * np.asarray(values)
        target = TARGETS_MS[name]
        print(f"| {name} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 95):.1f} | "
              f"{'-' if target is None else f'<= {target}'} |")
    print("\n| over a socket, one kept-alive connection | label write p50 ms | threshold change p50 ms |")
    print("|---|---|---|")
    for name, values in socket.items():
        print(f"| {name} | {values['label write p50 ms']:.1f} | {values['threshold change p50 ms']:.1f} |")
    print(f"\nThe loop from the page, {the_loop['labels']:,} labels (target <= 5 s):")
    for name, value in the_loop.items():
        if name != "labels":
            print(f"  {name:<36} {value:6.2f}")


if __name__ == "__main__":
    main()
