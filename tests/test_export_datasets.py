"""Training sets: `faramir export --format webdataset` (tar shards) and `--format hf` (a Hugging Face
dataset folder), read back with the real clients (`webdataset`, and `datasets` offline in a
child process) and compared field by field and byte by byte with the cache; filters, dedupe and
ranking choose the same rows as a table export; shard sizes; whole shards after a kill; reruns
resume, add what is new, and refuse other options."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import ExportError
from faramir.store.exports import export
from faramir.store.heads import registry
from faramir.store.labels.table import set_labels
from faramir.store.queries.ranking import top
from tests.conftest import write_images
from tests.gallery_helpers import middle_threshold, spread_head
from tests.hostile import spoil_cached

wds = pytest.importorskip("webdataset", reason="reading shards back needs webdataset: pip install 'faramir[dev]'")
pytest.importorskip("datasets", reason="reading the folder back needs datasets: pip install 'faramir[dev]'")

REPO = Path(__file__).resolve().parents[1]
HEAD = "spread"
VECTORS = ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features")
runner = CliRunner()


def collection(root: Path, weights: Path) -> dict:
    """A cache of 14 images (PNG and JPEG, one under two names), a head whose confidences spread
    over (0, 1), and curator labels on three of them."""
    from faramir.store.ingestion import ingest_all

    write_images(root / "imgs", 10, size=(64, 48))
    write_images(root / "imgs" / "jpeg", 4, fmt="jpg", seed=3, prefix="photo")
    shutil.copy(root / "imgs" / "img00002.png", root / "imgs" / "again.png")
    db = root / "db"
    ingest_all([root / "imgs"], db=db, weights_dir=weights, device="cpu", workers=0, recursive=True)
    spread_head(db, weights, HEAD)
    ids = Cache.open(db).read(schema.IMAGES, ["id"]).column("id").to_pylist()
    set_labels(ids[:2], "accept", db)
    set_labels(ids[2:3], "2d_fantasy", db)
    return {"db": db, "root": root, "weights": weights, "t": middle_threshold(db, HEAD)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_weights):
    return collection(tmp_path_factory.mktemp("datasets"), tiny_weights)


@pytest.fixture
def own(tmp_path, tiny_weights):
    """A collection of its own, for a test that spoils its files or grows it."""
    return collection(tmp_path / "own", tiny_weights)


def expected(db, t: float, **filters) -> dict[str, dict]:
    """id → what the cache holds for it: the result row, the head's 31 logits, the vectors, the
    row's facts and its curator label."""
    cache = Cache.open(db)
    cols = registry.columns(cache, HEAD)
    rows = {r["id"]: r for r in top(db, head=HEAD, threshold=t, limit=None, **filters).to_pylist()}
    raw = cache.read(schema.IMAGES).to_pylist()
    labels = dict(zip(*cache.read(schema.LABELS, ["id", "label"]).to_pydict().values()))
    out = {}
    for r in raw:
        if r["id"] in rows:
            out[r["id"]] = rows[r["id"]] | {"raw": r, "logits": [*r[cols.logits], r[cols.decision]],
                                            "curated": labels.get(r["id"])}
    return out


def check_record(record: dict, want: dict, t: float) -> None:
    """A sample's record holds what the cache holds (every field)."""
    raw = want["raw"]
    assert record["id"] == want["id"] and record["paths"] == want["paths"] and record["path"] in want["paths"]
    assert (record["head"], record["threshold"]) == (HEAD, t)
    assert record["accepted"] == want["accepted"] and record["decision"] == ("accept" if want["accepted"] else "reject")
    assert np.float32(record["confidence"]) == np.float32(want["confidence"])
    assert record["reason"] == want["label"]
    assert np.float32(record["aesthetic_score"]) == np.float32(want["aesthetic_score"])
    assert record["curator_label"] == want["curated"]
    assert [record[k] for k in ("width", "height", "format", "size")] == [raw[k] for k in ("width", "height", "format", "size")]
    assert record["experts_fingerprint"] == raw["experts_fingerprint"]
    assert record["weights_generated"] is True and len(record["head_fingerprint"]) == 64
    assert np.array_equal(np.float32(record["logits"]), np.float32(want["logits"]))


def read_webdataset(dest: Path) -> list[dict]:
    shards = sorted(glob.glob(str(dest / "shard-*.tar")))
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False)) if shards else []


def test_webdataset_shards_hold_every_field_and_byte_of_the_cache(built, tmp_path):
    t, dest = built["t"], tmp_path / "wds"
    result = export(dest, built["db"], format="webdataset", head=HEAD, threshold=t, shard_size=4,
                    with_logits=True, with_embeddings=True)
    want = expected(built["db"], t)
    assert (result.written, result.skipped, result.shards) == (14, 0, 4)
    samples = read_webdataset(dest)
    assert sorted(s["__key__"] for s in samples) == sorted(want)
    for sample in samples:
        record = json.loads(sample["json"])
        check_record(record, want[record["id"]], t)
        image = next(sample[k] for k in ("png", "jpg") if k in sample)
        assert hashlib.sha256(image).hexdigest() == record["id"] == sample["__key__"]
        assert image == Path(record["path"]).read_bytes()
        for name in VECTORS:
            vector = np.load(io.BytesIO(sample[f"{name}.npy"]))
            assert vector.dtype == np.float32 and np.array_equal(vector, np.float32(want[record["id"]]["raw"][name]))
    per_shard = [len({m.split(".")[0] for m in tarfile.open(p).getnames()}) for p in sorted(dest.glob("shard-*.tar"))]
    assert per_shard == [4, 4, 4, 2]
    assert sorted(p.name for p in dest.iterdir()) == ["faramir-export.json", *(f"shard-00000{i}.tar" for i in range(4))]


LOAD = """
import json, sys
from datasets import Image, load_dataset
train = load_dataset(sys.argv[1], split="train")
rows = train.cast_column("image", Image(decode=False)).to_list()
decoded = train[0]["image"].size if len(train) else None
for r in rows:
    r["image"] = {"bytes": r["image"]["bytes"].hex(), "path": r["image"]["path"]}
    r["ingested_at"] = r["ingested_at"].isoformat()
print(json.dumps({"rows": rows, "features": {k: str(v) for k, v in train.features.items()}, "decoded": decoded}))
"""


def load_with_datasets(dest: Path) -> dict:
    """`datasets.load_dataset(dest)` in a child process with the hub switched off."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(dest)], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hf_folder_loads_offline_with_datasets_and_matches_the_cache(built, tmp_path):
    t, dest = built["t"], tmp_path / "hf"
    result = export(dest, built["db"], format="hf", head=HEAD, threshold=t, shard_size="30KB", with_logits=True)
    want = expected(built["db"], t)
    assert (result.written, result.skipped) == (14, 0) and result.shards > 1
    loaded = load_with_datasets(dest)
    assert loaded["features"]["image"].startswith("Image(") and loaded["decoded"] == [64, 48]
    assert sorted(r["id"] for r in loaded["rows"]) == sorted(want)
    for row in loaded["rows"]:
        check_record(row, want[row["id"]], t)
        image = bytes.fromhex(row["image"]["bytes"])
        assert image == Path(row["path"]).read_bytes() and hashlib.sha256(image).hexdigest() == row["id"]
    for shard in sorted((dest / "data").glob("train-*.parquet")):
        assert shard.stat().st_size < 30_000 + 12_000 or pq.ParquetFile(shard).metadata.num_rows == 1
    card = (dest / "README.md").read_text()
    header = card.split("---\n")[1]
    assert "num_examples: 14\n" in header and "path: data/train-*.parquet" in header and "# license:" in header
    accepted = sum(w["accepted"] for w in want.values())
    assert f"| accept | {accepted} |" in card and f"| reject | {14 - accepted} |" in card
    assert "GENERATED weights" in card and f"--head {HEAD} --threshold {t:g}" in card and "--with-logits" in card
    for label in {w["label"] for w in want.values()}:
        assert f"| {label} | {sum(w['label'] == label for w in want.values())} |" in card


def test_every_filter_dedupe_and_ranking_choose_the_rows_a_table_export_does(built, tmp_path):
    t = built["t"]
    for n, options in enumerate(({"accepted": True}, {"accepted": False, "min_aesthetic": -1e9},
                                 {"sort": "aesthetic", "limit": 5}, {"dedupe": True, "dedupe_threshold": 0.9},
                                 {"min_confidence": 0.2, "max_confidence": 0.8})):
        export(tmp_path / f"rows{n}.jsonl", built["db"], head=HEAD, threshold=t, **options)
        rows = [json.loads(line)["id"] for line in (tmp_path / f"rows{n}.jsonl").read_text().splitlines()]
        for fmt in ("webdataset", "hf"):
            result = export(tmp_path / f"{fmt}{n}", built["db"], format=fmt, head=HEAD, threshold=t, **options)
            if fmt == "webdataset":
                got = [s["__key__"] for s in read_webdataset(tmp_path / f"{fmt}{n}")]
            else:
                got = pq.read_table(tmp_path / f"{fmt}{n}" / "data").column("id").to_pylist()
            assert got == rows and result.written == len(rows), (fmt, options)
    empty = tmp_path / "empty-hf"  # `datasets` loads no split without rows; every Parquet reader reads it
    export(empty, built["db"], format="hf", head=HEAD, threshold=t, min_confidence=1.0)
    table = pq.read_table(empty / "data")
    assert table.num_rows == 0 and table.column_names[:2] == ["image", "id"]
    assert "num_examples: 0\n" in (empty / "README.md").read_text()


def test_a_changed_or_vanished_file_is_skipped_and_listed_with_exit_status_3(own, tmp_path):
    imgs = own["root"] / "imgs"
    other = imgs / "img00001.png"
    spoil_cached(imgs / "img00000.png", other, tmp_path)  # a symlink to a password file; same size, other bytes
    (imgs / "img00003.png").unlink()
    for fmt in ("webdataset", "hf"):
        dest = tmp_path / fmt
        result = runner.invoke(app, ["export", str(dest), "--db", str(own["db"]), "--format", fmt, "--shard-size", "3"])
        assert result.exit_code == 3, result.output
        assert f"{imgs / 'img00000.png'}: no longer holds the cached image" in result.stderr
        assert f"{other}: no longer holds the cached image" in result.stderr
        assert f"{imgs / 'img00003.png'}: source file missing" in result.stderr
        assert "Exported 11 images in 4 new shards" in result.stderr
        files = [p for p in dest.rglob("*") if p.is_file()]
        assert not any(b"password" in p.read_bytes() for p in files)
        assert not [p for p in files if p.name.startswith(".")]  # no temporary shard left
    assert len(read_webdataset(tmp_path / "webdataset")) == 11


def test_a_rerun_resumes_adds_what_is_new_and_refuses_other_options(own, tmp_path, tiny_weights):
    from faramir.store.ingestion import ingest_all

    db, dest = own["db"], tmp_path / "train"
    first = export(dest, db, format="webdataset", shard_size=5)
    assert (first.written, first.shards) == (14, 3)
    (dest / ".shard-000003.tar.4242-0123abcd.tmp").write_bytes(b"half a shard a killed export left")
    again = export(dest, db, format="webdataset", shard_size=5)
    assert (again.written, again.present, again.shards) == (0, 14, 0)
    assert not (dest / ".shard-000003.tar.4242-0123abcd.tmp").exists()
    write_images(own["root"] / "imgs", 3, seed=11, prefix="new")
    ingest_all([own["root"] / "imgs"], db=db, weights_dir=tiny_weights, device="cpu", workers=0)
    grown = export(dest, db, format="webdataset", shard_size=5)
    assert (grown.written, grown.present, grown.shards) == (3, 14, 1)
    keys = [s["__key__"] for s in read_webdataset(dest)]
    assert len(keys) == len(set(keys)) == 17
    with pytest.raises(ExportError, match="made with other options \\(--accepted/--rejected\\); rerun it"):
        export(dest, db, format="webdataset", shard_size=5, accepted=True)
    with pytest.raises(ExportError, match="holds a webdataset export"):
        export(dest, db, format="hf", shard_size=5)
    with open(dest / "faramir-export.json", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ExportError, match="another export is writing there now"):
            export(dest, db, format="webdataset", shard_size=5)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds other files; export a training set into a new or empty folder"):
        export(mine, db, format="hf")
    assert os.listdir(mine) == ["notes.txt"]


def test_shard_sizes_by_images_or_bytes_and_bad_ones_refused(built, tmp_path):
    result = export(tmp_path / "bytes", built["db"], format="webdataset", shard_size="25KB")
    sizes = [p.stat().st_size for p in sorted((tmp_path / "bytes").glob("shard-*.tar"))]
    assert result.shards == len(sizes) > 1 and all(s <= 25_000 + 2 * 10240 for s in sizes)
    for bad in ("1.5", "0", "12 parsecs", "10B", "-3"):
        with pytest.raises(ExportError, match="shard size"):
            export(tmp_path / f"bad{bad}", built["db"], format="hf", shard_size=bad)
    for options, message in (({"format": "csv", "with_logits": True}, "the logits: only for --format"),
                             ({"format": "files", "shard_size": 3}, "a shard size: only for --format")):
        with pytest.raises(ExportError, match=message):
            export(tmp_path / "x.csv", built["db"], **options)
    assert not list(tmp_path.glob("bad*")) and not (tmp_path / "x.csv").exists()


KILLED = """
import os, signal, sys
from faramir.store.exports import export
db, dest, fmt = sys.argv[1:]
synced, fsync = [], os.fsync
def fsync_then_die_at_the_third(fd):  # a shard is synced just before it is linked into place
    synced.append(fd)
    if len(synced) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    fsync(fd)
os.fsync = fsync_then_die_at_the_third
export(dest, db, format=fmt, shard_size=1)
"""


@pytest.mark.parametrize("fmt", ("webdataset", "hf"))
def test_an_export_killed_mid_run_leaves_whole_shards_and_a_rerun_finishes(built, tmp_path, fmt):
    dest = tmp_path / fmt
    child = subprocess.run([sys.executable, "-c", KILLED, str(built["db"]), str(dest), fmt], cwd=REPO,
                           capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    shards = sorted(p for p in dest.rglob("*") if p.name.startswith(("shard-", "train-")))
    assert len(shards) == 2 and len([p for p in dest.rglob(".*") if p.name.endswith(".tmp")]) == 1
    for shard in shards:  # each whole: its reader reads it to the end
        ids = [m.split(".")[0] for m in tarfile.open(shard).getnames()] if fmt == "webdataset" else \
            pq.read_table(shard).column("id").to_pylist()
        assert len(set(ids)) == 1
    result = export(dest, built["db"], format=fmt, shard_size=1)
    assert result.present == len(shards) and result.written == 14 - len(shards)
    assert not [p for p in dest.rglob(".*") if p.name.endswith(".tmp")]
    ids = [s["__key__"] for s in read_webdataset(dest)] if fmt == "webdataset" else \
        [r["id"] for r in load_with_datasets(dest)["rows"]]
    assert sorted(ids) == sorted(expected(built["db"], built["t"]))


def test_cli_writes_a_training_set_and_says_how_many_shards(built, tmp_path):
    dest = tmp_path / "cli"
    result = runner.invoke(app, ["export", str(dest), "--db", str(built["db"]), "--format", "webdataset",
                                 "--head", HEAD, "--accepted", "--threshold", str(built["t"]), "--shard-size", "3",
                                 "--with-logits"])
    accepted = len(expected(built["db"], built["t"], accepted=True))
    assert result.exit_code == 0, result.output
    assert f"Exported {accepted} images in {-(-accepted // 3)} new shards to {dest}." in result.stderr
    again = runner.invoke(app, ["export", str(dest), "--db", str(built["db"]), "--format", "webdataset",
                                "--head", HEAD, "--accepted", "--threshold", str(built["t"]), "--shard-size", "3",
                                "--with-logits"])
    assert again.exit_code == 0 and f"Exported 0 images in 0 new shards to {dest}, {accepted} already there." in again.stderr
    bad = runner.invoke(app, ["export", str(tmp_path / "x"), "--db", str(built["db"]), "--format", "hf",
                              "--shard-size", "lots"])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: shard size 'lots': give a number of images")


def test_an_export_that_fails_before_its_first_shard_leaves_nothing_behind(built, tmp_path):
    dest = tmp_path / "new" / "train"
    with pytest.raises(Exception, match="no head named 'typo'"):
        export(dest, built["db"], format="hf", head="typo")
    assert not (tmp_path / "new").exists()  # so the corrected command runs
    result = export(dest, built["db"], format="hf", head=HEAD)
    assert result.written == 14


def test_tar_headers_read_back_with_tarfile_also_where_a_name_needs_a_pax_header(tmp_path):
    from faramir.store.exports.webdataset import BLOCK, _header, _padding

    members = [("a" * 64 + ".png", b"png bytes"), ("été.jpg", b"x" * 700), ("c" * 120 + ".json", b"{}")]
    with open(tmp_path / "t.tar", "wb") as out:
        for name, data in members:
            out.write(_header(name, len(data), 1_700_000_000) + data + _padding(len(data)))
        out.write(b"\0" * 2 * BLOCK)
    with tarfile.open(tmp_path / "t.tar") as tar:
        got = [(m.name, tar.extractfile(m).read(), m.mtime, m.mode) for m in tar.getmembers()]
    assert got == [(name, data, 1_700_000_000, 0o644) for name, data in members]
