"""Training-set exports at scale: `faramir export --format webdataset` and `--format hf` over N rows,
peak RSS and images/s, each export in a fresh process.

    python bench/export.py                       # 1M rows under /tmp/faramir-bench
    python bench/export.py --rows 20000          # a quicker look
    python bench/export.py --rows 1000000 --json # one JSON object per format on stdout
    python bench/export.py --rows 100000 --with-embeddings --dedupe   # the vectors too; near-duplicates out

The rows come from bench/stage_two.py's synthetic cache (`/tmp/faramir-bench/cache-1000000`, built
by `python bench/stage_two.py --rows 1000000` when missing): real schema, full-size vectors. Its
paths name no files, and an export reads only bytes that hash to a row's id, so this benchmark
makes its own cache beside it, `export-N/cache.lancedb`: a shallow clone of the images table (its
data files are shared, not copied), the rows from N on deleted, and each row's id, path and size
replaced by those of a small PNG it writes under `export-N/images/` (`--image-kb`, default 2 KB,
each one distinct: a private chunk holds random bytes seeded by its row number). Built once, then reused (a marker holds
N, the image size and the source's version).

Each export writes every row (no filter: the worst case for the row loop) in the default shard
size (500 MB) into `export-N/out-FORMAT`, which is removed afterwards. Reported: wall s, CPU s
(user + sys), images/s and MB/s of image bytes (wall), peak RSS of the process (VmHWM) and of a
process that only opened the cache (the baseline: Python, pyarrow, Lance).

Memory is bounded by design: rows are read 4,096 at a time, a WebDataset shard streams each image
from its file into the tar as it is hashed, a Parquet shard holds at most one row group of images
(32 MB). So memory should not grow with N: the resident memory at 10%, 50% and 90% of the rows
is reported beside the peak.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import peak_rss_mb  # noqa: E402

SOURCE_ROWS = 1_000_000
FORMATS = ("webdataset", "hf")


# -- the images: small distinct PNGs --------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PIXELS = zlib.compress(b"".join(b"\0" + bytes(range(24)) for _ in range(8)))  # 8x8 RGB, a ramp
_HEAD = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))


def png(row: int, size: int) -> bytes:
    """A valid 8x8 PNG of exactly `size` bytes, row `row`'s alone: a private chunk that decoders skip
    holds seeded random bytes (incompressible, as image data is)."""
    fixed = len(_HEAD) + len(_chunk(b"IDAT", _PIXELS)) + len(_chunk(b"IEND", b"")) + 12
    filler = random.Random(row).randbytes(max(8, size - fixed))
    return _HEAD + _chunk(b"faRm", filler) + _chunk(b"IDAT", _PIXELS) + _chunk(b"IEND", b"")


def image_path(images: Path, row: int) -> str:
    return str(images / f"{row // 1000:04d}" / f"{row:08d}.png")


# -- the cache -----------------------------------------------------------------------------------


def prepare(n: int, root: Path, image_bytes: int, log) -> Path:
    """The bench cache of `n` rows with real files (built once per n and image size)."""
    source = root / f"cache-{SOURCE_ROWS}"
    if not (source / "bench.json").is_file():
        log(f"building the 1M-row source cache {source} (bench/stage_two.py; a long while, once)")
        subprocess.run([sys.executable, str(ROOT / "bench" / "stage_two.py"), "--rows", str(SOURCE_ROWS),
                        "--dir", str(root), "--queries", "1"], check=True)
    import lance

    version = lance.dataset(str(source / "images.lance")).version
    here = root / f"export-{n}"
    db, images, marker = here / "cache.lancedb", here / "images", here / "bench.json"
    made = {"rows": n, "image_bytes": image_bytes, "images": 2, "source": str(source), "source_version": version}
    if marker.is_file() and json.loads(marker.read_text()) == made and _readable(db):
        return db
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    t0 = time.perf_counter()
    _write_images(n, images, image_bytes)
    log(f"wrote {n:,} images of {image_bytes} bytes in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    _clone(source, db, version, n, images, image_bytes)
    log(f"cloned the cache in {time.perf_counter() - t0:.0f} s")
    marker.write_text(json.dumps(made))
    return db


def _readable(db: Path) -> bool:
    try:
        from faramir.store.cache import Cache

        Cache.open(db, warn_generated=False).dataset().head(1)
        return True
    except Exception:  # the source's data files this clone shares were cleaned up
        return False


def _write_images(n: int, images: Path, size: int) -> None:
    for row in range(n):
        if row % 1000 == 0:
            (images / f"{row // 1000:04d}").mkdir(parents=True, exist_ok=True)
        with open(image_path(images, row), "wb") as f:
            f.write(png(row, size))


def _clone(source: Path, db: Path, version: int, n: int, images: Path, size: int) -> None:
    """`source`'s tables in `db`: images as a shallow clone whose rows from `n` on are deleted and
    whose id, paths and size name the bench's images; the small tables copied."""
    import lance
    import pyarrow as pa
    import pyarrow.compute as pc

    db.mkdir(parents=True)
    for table in ("meta", "heads", "labels", "failures", "files"):
        shutil.copytree(source / f"{table}.lance", db / f"{table}.lance")
    ds = lance.dataset(str(source / "images.lance")).shallow_clone(str(db / "images.lance"), version)

    def facts(batch: pa.RecordBatch) -> pa.RecordBatch:
        rows = [int(p[0].rsplit("/", 1)[1][:-4]) for p in batch.column("paths").to_pylist()]
        data = [png(r, size) if r < n else b"" for r in rows]
        return pa.RecordBatch.from_pydict({
            "bench_row": pa.array(rows, pa.int64()),
            "new_id": pa.array([hashlib.sha256(d).hexdigest() for d in data], pa.string()),
            "new_paths": pa.array([[image_path(images, r)] for r in rows], pa.list_(pa.string())),
            "new_size": pa.array([len(d) for d in data], pa.int64()),
        })

    ds.add_columns(facts, read_columns=["paths"], batch_size=50_000)
    ds = lance.dataset(str(db / "images.lance"))
    ds.delete(f"bench_row >= {n}")
    ds.drop_columns(["id", "paths", "size", "bench_row"])
    ds.alter_columns({"path": "new_id", "name": "id"}, {"path": "new_paths", "name": "paths"},
                     {"path": "new_size", "name": "size"})
    files = lance.dataset(str(db / "files.lance"))
    files.delete("true")
    assert pc.sum(lance.dataset(str(db / "images.lance")).to_table(columns=["size"]).column("size")).as_py() == n * size


# -- one measurement per process -------------------------------------------------------------------


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime


def measure(op: str, db: str, dest: str, with_embeddings: bool, dedupe: bool) -> dict:
    import faramir.store.exports.hf  # noqa: F401  (imports are the baseline's, not the export's)
    import faramir.store.exports.webdataset  # noqa: F401
    from faramir.store.cache import Cache
    from faramir.store.exports import export

    cache = Cache.open(db, warn_generated=False)
    cache.dataset().count_rows()
    if op == "baseline":
        return {"peak_rss_gb": peak_rss_mb() / 1024}
    rss_at: dict[str, float] = {}  # resident memory at 10%, 50% and 90% of the rows: flat if bounded

    def progress(done: int, total: int) -> None:
        for share in (10, 50, 90):
            if f"{share}%" not in rss_at and done * 100 >= share * total:
                rss_at[f"{share}%"] = _rss_gb()

    t0, cpu0 = _usage()
    result = export(dest, cache, format=op, with_embeddings=with_embeddings, dedupe=dedupe, progress=progress)
    t1, cpu1 = _usage()
    image_bytes = sum(p.stat().st_size for p in Path(dest).rglob("*") if p.is_file())
    return {"rows": result.rows, "written": result.written, "skipped": result.skipped, "shards": result.shards,
            "wall_s": t1 - t0, "cpu_s": cpu1 - cpu0, "images_per_s": result.written / (t1 - t0),
            "output_mb_per_s": image_bytes / 1e6 / (t1 - t0), "output_gb": image_bytes / 1e9,
            "peak_rss_gb": peak_rss_mb() / 1024, "rss_gb_at": rss_at}


def _rss_gb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 2**20


def run_child(op: str, db: Path, dest: Path, with_embeddings: bool = False, dedupe: bool = False) -> dict:
    args = [sys.executable, __file__, "--measure", op, "--db", str(db), "--dest", str(dest)]
    args += ["--with-embeddings"] if with_embeddings else []
    out = subprocess.run(args + (["--dedupe"] if dedupe else []), capture_output=True, text=True, check=False,
                         cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{op} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=SOURCE_ROWS, help="rows to export (at most 1,000,000)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/faramir-bench"))
    parser.add_argument("--image-kb", type=float, default=2.0, help="bytes of each image, in KB")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--with-embeddings", action="store_true", help="export the four vectors too")
    parser.add_argument("--dedupe", action="store_true", help="leave out near-duplicates (their search first)")
    parser.add_argument("--json", action="store_true", help="one JSON object per format on stdout")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.db, args.dest, args.with_embeddings, args.dedupe)))
        return
    if not 1 <= args.rows <= SOURCE_ROWS:
        raise SystemExit(f"--rows {args.rows}: between 1 and {SOURCE_ROWS:,}")

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    db = prepare(args.rows, args.dir, int(args.image_kb * 1000), log)
    base = run_child("baseline", db, db.parent / "unused")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    for fmt in args.formats:
        dest = db.parent / f"out-{fmt}"
        shutil.rmtree(dest, ignore_errors=True)
        try:
            r = run_child(fmt, db, dest, args.with_embeddings, args.dedupe)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        r |= {"format": fmt, "with_embeddings": args.with_embeddings, "dedupe": args.dedupe,
              "baseline_rss_gb": base["peak_rss_gb"],
              "machine": machine, "load_average": os.getloadavg()[0]}
        rows.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
    if not args.json:
        print(f"\nMachine: {machine}, load average at the end {os.getloadavg()[0]:.1f}")
        print("| format | rows | images/s | MB/s written | wall s | CPU s | peak RSS GB (baseline) "
              "| RSS GB at 10/50/90% of rows | shards |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            extra = (" +vectors" if r["with_embeddings"] else "") + (" --dedupe" if r["dedupe"] else "")
            print(f"| {r['format']}{extra} | {r['written']:,} "
                  f"| {r['images_per_s']:,.0f} | {r['output_mb_per_s']:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
                  f"| {r['peak_rss_gb']:.2f} ({r['baseline_rss_gb']:.2f}) "
                  f"| {' / '.join(f'{v:.2f}' for v in r['rss_gb_at'].values())} | {r['shards']} |")


if __name__ == "__main__":
    main()
