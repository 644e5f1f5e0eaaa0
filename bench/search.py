"""Text search at scale, in a warm process: encoding a sentence and the filtered vector query,
timed separately.

    python bench/search.py                          # 1M rows under /tmp/faramir-bench
    python bench/search.py --rows 100000 --queries 20

Uses the synthetic cache of `bench/stage_two.py` (built there, or here the same way: full size,
1152-d, seed 0), with an ANN index on the SigLIP embedding (`faramir index --siglip`, built here
if missing), and a GENERATED full-size text tower (open_clip's ViT-SO400M-14-SigLIP-384 text
config, seeded random weights: `faramir weights generate --variant full`, reused from
`<dir>/text-full`). A fresh process (so that its peak RSS is the search's alone) loads the tower
once, then for each of `--queries` sentences:

- encode: the text tower on one sentence (tokenise + 27 blocks + projection), `TextEncoder.encode`;
- query: `store.similar(vector, embedding="siglip", k=10, accepted=True)`, the vector query
  `faramir.store.vectors` runs, at several refine factors, with recall@10 against the exact filtered
  search on a few of them;
- search: `faramir.store.vectors` end to end (both of the above, at SEARCH_REFINE_FACTOR).

Random text weights put the query vectors in arbitrary directions of the SigLIP space, not
near the clustered synthetic rows; the latency is that of any query, the recall a pessimistic one.
Tests never assert on timings; this script only prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import peak_rss_mb  # noqa: E402

SENTENCES = [
    "a dragon over water", "accepted images of a castle at night", "a cute cat sleeping",
    "a knight with a sword and shield", "a 3d render of a robot", "fantasy landscape with mountains",
    "a portrait of a woman with red hair", "an anime girl in a forest", "a wireframe model",
    "a blurry photo", "sunset over the sea", "a spaceship flying above a city", "a wolf in the snow",
    "an old wizard with a white beard", "a colorful bird on a tree", "a scary dark forest",
    "a village near a river", "text on a screenshot", "a horse running in a field", "a tiny house",
]


def ensure_cache(n: int, root: Path) -> Path:
    from bench.stage_two import build
    from faramir.store.cache import Cache
    from faramir.store.vectors.indexes import index, list_indexes

    db, workdir = root / f"cache-{n}", root / f"work-{n}"
    built = build(n, db, workdir)
    if built is not None:
        print(f"built the cache in {built:.0f} s", flush=True)
    if not any(ix["column"] == "siglip_embedding" for ix in list_indexes(db)):
        t0 = time.perf_counter()
        index(Cache.open(db), embeddings=("siglip",))
        print(f"indexed siglip_embedding in {time.perf_counter() - t0:.0f} s", flush=True)
    return db


def ensure_text_weights(root: Path) -> Path:
    from faramir.fake_weights import generate_text
    from faramir.text_weights import missing_text_files

    weights = root / "text-full"
    if missing_text_files(weights):
        t0 = time.perf_counter()
        generate_text(weights, "full", 0)
        print(f"generated the full-size text tower in {time.perf_counter() - t0:.0f} s", flush=True)
    return weights


def measure(db: Path, weights: Path, queries: int, exact_queries: int, refine_factors: list[int]) -> dict:
    from faramir.store.cache import Cache
    from faramir.store.vectors.nearest import similar
    from faramir.store.vectors.text import search
    from faramir.text_weights import load_text_encoder

    cache = Cache.open(db)
    t0 = time.perf_counter()
    encoder = load_text_encoder(weights)
    load_s = time.perf_counter() - t0
    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(queries)]
    encoder.encode(["warm up"])
    similar(encoder.encode(["warm up the query"])[0], cache, k=10, embedding="siglip", accepted=True)

    encode_s, vectors = [], []
    for text in sentences:
        t = time.perf_counter()
        vectors.append(encoder.encode([text])[0])
        encode_s.append(time.perf_counter() - t)
    truth = [set(similar(v, cache, k=10, embedding="siglip", accepted=True, exact=True).column("id").to_pylist())
             for v in vectors[:exact_queries]]
    ms = lambda xs, p: 1000 * float(np.percentile(xs, p))  # noqa: E731
    by_refine = {}
    for refine in refine_factors:
        query_s, recall = [], []
        for q, vector in enumerate(vectors):
            t = time.perf_counter()
            rows = similar(vector, cache, k=10, embedding="siglip", accepted=True, refine_factor=refine)
            query_s.append(time.perf_counter() - t)
            if q < len(truth):
                recall.append(len(set(rows.column("id").to_pylist()) & truth[q]) / 10)
        by_refine[refine] = {"p50_ms": ms(query_s, 50), "p95_ms": ms(query_s, 95),
                             "recall_at_10": float(np.mean(recall)) if recall else None}
    search_s = []
    for text in sentences:
        t = time.perf_counter()
        search(text, cache, k=10, encoder=encoder, accepted=True)
        search_s.append(time.perf_counter() - t)
    return {"rows": cache.images().count_rows(), "load_s": load_s,
            "encode_p50_ms": ms(encode_s, 50), "encode_p95_ms": ms(encode_s, 95), "query": by_refine,
            "exact_queries": len(truth), "search_p50_ms": ms(search_s, 50), "queries": queries,
            "peak_rss_gb": peak_rss_mb() / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--exact-queries", type=int, default=5, help="queries also run exactly, for recall")
    parser.add_argument("--refine-factors", type=int, nargs="+", default=[10, 30, 100],
                        help="refine factors of the vector query to compare (search uses SEARCH_REFINE_FACTOR)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    weights = args.dir / "text-full"
    if args.measure:  # in a fresh process: its peak RSS is the search's alone
        print(json.dumps(measure(args.measure, weights, args.queries, args.exact_queries, args.refine_factors)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    ensure_text_weights(args.dir)
    results = []
    for n in args.rows:
        db = ensure_cache(n, args.dir)
        out = subprocess.run([sys.executable, __file__, "--measure", str(db), "--dir", str(args.dir),
                              "--queries", str(args.queries), "--exact-queries", str(args.exact_queries),
                              "--refine-factors", *map(str, args.refine_factors)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"measuring failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {json.dumps(results[-1])}", flush=True)
    from faramir.store.vectors.text import SEARCH_REFINE_FACTOR

    print("\nMachine:", platform.processor() or platform.machine(), f"{os.cpu_count()} cores,",
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print("Full-size text tower (GENERATED weights); SigLIP embedding with an IVF_RQ index; filter --accepted;")
    print(f"recall@10 against exact search over {results[0]['exact_queries']} queries; "
          f"search uses refine factor {SEARCH_REFINE_FACTOR}")
    print("| rows | tower load s | encode p50 / p95 ms | refine | query p50 / p95 ms | recall@10 | search p50 ms "
          "| peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for refine, q in r["query"].items():
            recall = f"{q['recall_at_10']:.2f}" if q["recall_at_10"] is not None else "-"
            print(f"| {r['rows']:,} | {r['load_s']:.1f} | {r['encode_p50_ms']:.0f} / {r['encode_p95_ms']:.0f} "
                  f"| {refine} | {q['p50_ms']:.1f} / {q['p95_ms']:.1f} | {recall} | {r['search_p50_ms']:.0f} "
                  f"| {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
