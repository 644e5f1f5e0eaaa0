"""The map at scale: laying the cache out (`faramir map`), the Map view's data on the page, and
recolouring it when the threshold moves.

    python bench/map.py                          # 1M rows: bench/stage_two.py's cache under /tmp/faramir-bench
    python bench/map.py --rows 100000 --dir /tmp/bench --json
    python bench/map.py --keep-layout            # the page only, on the layout already stored

Uses (building it once, like bench/serve.py) the synthetic cache of bench/stage_two.py, and writes
its layout into it (`faramir.store.map`: the layout and layout_model tables; the rest of the cache
is untouched). Three figures, each with its target on a 2-core machine at 1M rows:

- layout: `map_layout(refit=True)` (UMAP fitted on --sample rows, every other row placed with the
  fit), wall and CPU seconds, and the fit's and the placing's share; target <= 15 min;
- on the page: from navigating to /?view=map in Debian's Chromium (headless, software WebGL) to
  every point drawn, coloured by the decision (the page, /api/info, /api/map, the points as
  float32 and the confidences as float32, uploaded and drawn); the server's first answers work
  out the points' rows in the images table, so the first load after a start is measured; target
  <= 2 s;
- recolour on a threshold change: the page's own time from the slider's input to the new colours
  drawn (a loop over the confidences, one buffer upload, one draw, gl.finish), median of 10
  thresholds; no request is made; target <= 200 ms.

Tests never assert on timings; this only prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("FARAMIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def layout(db: Path, sample: int) -> dict:
    from faramir.store.map.layout import map_layout

    marks = {}

    def progress(stage, done, total):
        marks.setdefault(stage, time.perf_counter())

    t0, c0 = time.perf_counter(), cpu()
    info = map_layout(db, sample=sample, refit=True, progress=progress)
    wall = time.perf_counter() - t0
    fit_s = marks.get("place", time.perf_counter()) - t0
    return {"rows": info.rows, "sample": info.sample, "layout_s": wall, "cpu_s": cpu() - c0,
            "fit_s": fit_s, "place_s": wall - fit_s}


def page(db: Path, thresholds: int = 10) -> dict:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from faramir.gallery.app import create_app
    from faramir.gallery.serving import listening_socket

    app = create_app(db, work=db.parent / f"{db.name}.gallery-bench")
    sock = listening_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1280, "height": 860})
            pg.set_default_timeout(120_000)
            t0 = time.perf_counter()
            pg.goto(f"{url}/?view=map&t=0.5")
            while not pg.evaluate("() => !!(window.faramirMapView && window.faramirMapView.ready)"):
                time.sleep(0.02)
            loaded = time.perf_counter() - t0
            in_page = pg.evaluate("() => performance.now()")  # since navigation started
            resources = pg.evaluate("""() => Object.fromEntries(performance.getEntriesByType('resource')
                .filter(e => e.name.includes('/api/map')).map(e => [new URL(e.name).pathname, e.duration]))""")
            count = pg.evaluate("() => window.faramirMapView.info.count")
            recolour = []
            for k in range(thresholds):
                t = f"{0.3 + 0.04 * k:.2f}"
                before = pg.evaluate("() => window.faramirMapView.lastRecolourMs")
                pg.eval_on_selector("#threshold", "(el, t) => { el.value = t; el.dispatchEvent(new Event('input', "
                                                  "{bubbles: true})); }", t)
                while pg.evaluate("b => window.faramirMapView.lastRecolourMs === b", before):
                    time.sleep(0.01)
                recolour.append(pg.evaluate("() => window.faramirMapView.lastRecolourMs"))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    recolour.sort()
    return {"points": count, "page_s": loaded, "page_in_browser_s": in_page / 1000,
            "points_request_ms": resources.get("/api/map/points"), "colours_request_ms": resources.get("/api/map/colours"),
            "map_request_ms": resources.get("/api/map"), "recolour_ms_median": recolour[len(recolour) // 2],
            "recolour_ms_max": recolour[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--sample", type=int, default=50_000, help="rows UMAP is fitted on (default 50,000)")
    parser.add_argument("--keep-layout", action="store_true", help="measure the page only, on the stored layout")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from bench.serve import ensure_cache

    db = ensure_cache(args.rows, args.dir)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    results = {} if args.keep_layout else {"layout": layout(db, args.sample)}
    results["page"] = page(db)
    load = os.getloadavg()[0]
    if args.json:
        for name, values in results.items():
            print(json.dumps({"measure": name, "rows": args.rows, "machine": machine, "load": load, **values}))
        return
    print(f"\nMachine: {machine}, load average {load:.1f}; {args.rows:,} rows")
    if "layout" in results:
        r = results["layout"]
        print(f"layout (target <= 900 s): {r['layout_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU; UMAP fitted on "
              f"{r['sample']:,} rows in {r['fit_s']:.1f} s, the other {r['rows'] - r['sample']:,} placed in {r['place_s']:.1f} s")
    r = results["page"]
    print(f"the map's data on the page (target <= 2 s): {r['page_s']:.2f} s to {r['points']:,} points drawn "
          f"(/api/map {r['map_request_ms']:.0f} ms, points {r['points_request_ms']:.0f} ms, "
          f"colours {r['colours_request_ms']:.0f} ms)")
    print(f"recolouring on a threshold change (target <= 200 ms): median {r['recolour_ms_median']:.0f} ms, "
          f"max {r['recolour_ms_max']:.0f} ms")


if __name__ == "__main__":
    main()
