"""Hostile and careless use of the CLI and the gallery: each class of misuse gets one line naming
the file or the folder and the fix (a 4xx or 503 with one line of JSON from the gallery), never a
traceback, and loses nothing: nothing is written where the user did not ask, and the cache stays
whole. (Files that are not images are tests/hostile.py's; weights of the wrong kinds,
tests/test_weights.py's; a thumbnail of a huge file, tests/test_gallery_thumbnails.py's.)"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.gallery.app import create_app
from faramir.store.cache import Cache
from faramir.store.heads import registry
from faramir.weights import FARAMIR_FILE
from tests.conftest import read_only, write_images
from tests.hostile import spoil_cached

runner = CliRunner()
BASE = "http://127.0.0.1:8765"


def run(*args) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of `faramir ARGS`, in process; never a traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


def refused(*args, code: int = 1) -> str:
    """The one line `faramir ARGS` is refused with (exit status `code`), warnings and notes aside."""
    status, lines = run(*args)
    lines = [line for line in lines if not line.startswith(("Warning:", "Note:", "WARNING"))]
    assert status == code and len(lines) == 1 and lines[0].startswith("Error: "), (status, lines)
    assert "Traceback" not in lines[0]
    return lines[0]


def listing(folder: Path) -> dict[str, int]:
    """Every file below `folder` with its size: what a refusal must leave as it was."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def ingested(root: Path, weights: Path) -> dict:
    """A cache of 8 generated images (tiny weights) at root, labelled, and the images."""
    from faramir.store.ingestion import ingest_all
    from faramir.store.labels.table import set_labels

    images = write_images(root / "imgs", 8, size=(64, 48))
    db = root / "cache.lancedb"
    ingest_all([root / "imgs"], db=db, weights_dir=weights, device="cpu", workers=0)
    ids = [row["id"] for row in Cache.open(db).read("images", ["id"]).to_pylist()]
    set_labels(ids[:4], "accept", db)
    set_labels(ids[4:], "reject", db)
    return {"db": db, "root": root, "images": images, "weights": weights}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_weights):
    """A cache for tests that only read it, or are refused before they write."""
    return ingested(tmp_path_factory.mktemp("hostile-use"), tiny_weights)


@pytest.fixture
def cache(tmp_path, tiny_weights) -> dict:
    """A cache of its own for one test to spoil (its images too)."""
    return ingested(tmp_path / "own", tiny_weights)


# -- 1. export copies only the cached content -----------------------------------------------------


def spoil_two_images(cache: dict, tmp_path: Path) -> tuple[Path, Path]:
    """The cache's first image made a symlink to a password file, its second the same size with
    other bytes (`spoil_cached`); returns both paths."""
    first, second = cache["images"][0], cache["images"][1]
    spoil_cached(first, second, tmp_path)
    return first, second


def test_export_copies_only_bytes_that_are_the_cached_image(cache, tmp_path):
    first, second = spoil_two_images(cache, tmp_path)
    dest = tmp_path / "out"
    status, lines = run("export", dest, "--db", cache["db"])
    assert status == 3
    assert any(str(first) in line and "no longer holds the cached image" in line for line in lines)
    assert any(str(second) in line for line in lines)
    exported = {p.name: p.read_bytes() for p in dest.iterdir()}
    assert len(exported) == 6 and first.name not in exported and second.name not in exported
    assert all(b"password" not in data for data in exported.values())
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no copy left half-made
    status, _ = run("export", tmp_path / "links", "--db", cache["db"], "--link", "symlink")
    assert status == 3 and first.name not in os.listdir(tmp_path / "links")


# -- 2. numbers beyond float32's range ----------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("--max-aesthetic", "-1e39"), ("--min-aesthetic", "1e39"),
                                           ("--min-aesthetic", "nan"), ("--max-aesthetic", "inf")])
def test_numbers_beyond_float32_are_refused_in_one_line(built, option, value):
    line = refused("top", "--db", built["db"], option, value)
    assert f"{option[2:].replace('-', ' ')}" in line and "float32" in line


def test_the_gallery_answers_numbers_beyond_float32_with_a_400(built, tmp_path):
    client = TestClient(create_app(built["db"], work=tmp_path / "work"), base_url=BASE)
    for params in ({"max_aesthetic": "1e39"}, {"min_aesthetic": "-1e39"}, {"after": "1e39," + "0" * 64},
                   {"max_aesthetic": "nan"}, {"threshold": "1e39"}, {"limit": "99999999999999999999"}):
        response = client.get("/api/grid", params=params)
        assert response.status_code == 400, (params, response.text)
        assert "\n" not in response.json()["error"] and "schema" not in response.json()["error"].lower()
    epochs = client.post("/api/finetune", json={"epochs": 10**20}, headers={"X-Faramir-Token": client.app.state.token})
    assert epochs.status_code == 400


# -- 3. a cache that cannot be written ----------------------------------------------------------------


def test_every_write_to_a_read_only_cache_is_one_line_naming_it_and_reads_work(cache, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{cache['images'][0]},accept\n")
    head = cache["weights"] / FARAMIR_FILE
    with read_only(cache["db"]) as db:
        before = listing(db)
        for args in (("labels", "import", labels), ("labels", "rm", "--all"), ("heads", "rm", "faramir-v1"),
                     ("rescore", "--head", head, "--name", "again"), ("index",),
                     ("finetune", "--out", tmp_path / "t.pth", "--name", "tuned", "--epochs", "1")):
            line = refused(*args, "--db", db)
            assert line.startswith(f"Error: {db}: the cache cannot be written here") or "default head" in line, line
            assert "--db" in line or "default head" in line
        new = write_images(tmp_path / "new", 2, seed=5)
        line = refused("ingest", *new, "--db", db, "--weights-dir", cache["weights"], "--device", "cpu")
        assert line.startswith(f"Error: {db}: the cache cannot be written here")
        assert run("top", "--db", db)[0] == 0 and run("stats", "--db", db)[0] == 0  # reads work
        app_ = create_app(db, work=tmp_path / "work")
        client = TestClient(app_, base_url=BASE)
        assert client.get("/api/info").json()["cannot_write"].startswith(f"{db}: the cache cannot be written")
        ids = [r["id"] for r in client.get("/api/grid").json()["rows"][:2]]
        write = client.post("/api/labels", json={"ids": ids, "label": "accept"},
                            headers={"X-Faramir-Token": app_.state.token})
        assert write.status_code == 503 and "cannot be written" in write.json()["error"]
        job = client.post("/api/finetune", json={"epochs": 1}, headers={"X-Faramir-Token": app_.state.token})
        assert job.status_code == 503 and "cannot be written" in job.json()["error"]
        assert listing(db) == before


# -- 4. --db that is not a faramir cache -----------------------------------------------------------


def test_a_db_that_is_another_lancedb_database_is_refused_before_anything_is_written(built, tmp_path):
    import lancedb
    import pyarrow as pa

    other = tmp_path / "other.lancedb"
    lancedb.connect(other).create_table("images", pa.table({"url": ["a"], "vector": [[1.0, 2.0]]}))
    before = listing(other)
    line = refused("ingest", built["images"][0], "--db", other, "--weights-dir", built["weights"], "--device", "cpu")
    assert line == f"Error: {other}: not a faramir cache (it holds a LanceDB database with tables images); " \
                   f"give --db a new or empty folder"
    assert refused("top", "--db", other) == line
    assert listing(other) == before


def test_a_db_that_is_a_file_is_refused_by_reads_and_writes_with_advice_that_works(built, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    for args in (("top",), ("ingest", built["images"][0], "--weights-dir", built["weights"], "--device", "cpu")):
        line = refused(*args, "--db", file)
        assert line == f"Error: {file}: a file, not a cache; give --db a folder (a new one is made there), " \
                       f"e.g. --db {file}.lancedb"
    assert file.read_text() == "mine\n"
    status, _ = run("ingest", built["images"][0], "--db", f"{file}.lancedb", "--weights-dir", built["weights"],
                    "--device", "cpu")
    assert status == 0  # the advice works


def test_a_folder_of_other_files_is_not_made_a_cache(built, tmp_path):
    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    (pictures / "holiday.jpg").write_bytes(b"not ours")
    line = refused("ingest", built["images"][0], "--db", pictures, "--weights-dir", built["weights"], "--device", "cpu")
    assert "not a faramir cache (it holds 1 entries (holiday.jpg))" in line
    assert os.listdir(pictures) == ["holiday.jpg"]


# -- 5. label files ---------------------------------------------------------------------------------


def test_a_binary_label_file_is_one_line(built, tmp_path):
    junk = tmp_path / "labels.csv"
    junk.write_bytes(bytes(range(256)) * 64)
    assert "not a text file (UTF-8)" in refused("labels", "import", junk, "--db", built["db"])
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"path,label\n\x00,accept\n")
    assert "NUL bytes" in refused("labels", "import", nul, "--db", built["db"])


def test_json_lines_that_are_not_objects_are_refused_row_by_row_and_none_imported_fails(built, tmp_path):
    junk = tmp_path / "labels.jsonl"
    junk.write_text("\n".join(['[1, 2]', '"x"', "42", "null"] * 30) + "\n")
    status, lines = run("labels", "import", junk, "--db", built["db"])
    assert status == 1 and lines[-1].startswith(f"Error: {junk}: no label imported (120 rows skipped")
    rows = [line for line in lines if line.startswith(f"Warning: {junk}:")]
    assert len(rows) == 20 and "not a JSON object" in rows[0]  # the first few, then a count
    assert "Warning: … and 100 more rows skipped" in lines


def test_some_rows_skipped_is_exit_status_3(built, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{built['images'][0]},accept\nnowhere.png,accept\n")
    assert run("labels", "import", labels, "--db", built["db"])[0] == 3


# -- 6. export destinations ---------------------------------------------------------------------------


def test_exports_into_the_kernels_file_systems_or_the_cache_are_refused(cache):
    db = cache["db"]
    proc = Path("/proc/self/faramir-export")
    if Path("/proc/self").is_dir():
        assert "on the kernel's proc file system" in refused("export", proc, "--db", db)
        assert "on the kernel's proc file system" in refused("export", "/proc/self/out.csv", "--db", db)
        for fmt in ("webdataset", "hf"):
            assert "on the kernel's proc file system" in refused("export", proc, "--db", db, "--format", fmt)
    before = listing(db)
    for dest in (db, db / "images.lance", db / "export-here", db / "rows.csv"):
        assert refused("export", dest, "--db", db) == f"Error: {dest}: inside the cache {db}; export to a folder " \
                                                     f"outside it"
    for fmt in ("webdataset", "hf"):
        assert "inside the cache" in refused("export", db / "train", "--db", db, "--format", fmt)
    assert listing(db) == before


def test_a_training_set_exports_only_bytes_that_are_the_cached_image(cache, tmp_path):
    first, second = spoil_two_images(cache, tmp_path)
    for fmt in ("webdataset", "hf"):
        dest = tmp_path / fmt
        status, lines = run("export", dest, "--db", cache["db"], "--format", fmt)
        assert status == 3
        assert any(str(first) in line and "no longer holds the cached image" in line for line in lines)
        assert any(str(second) in line for line in lines) and any("Exported 6 images" in line for line in lines)
        written = [p for p in dest.rglob("*") if p.is_file()]
        assert not any(b"password" in p.read_bytes() for p in written)
        assert not [p for p in written if p.name.startswith(".")]  # no shard left half-made


def test_a_full_disk_during_an_export_names_the_destination(cache):
    if os.geteuid() != 0:
        pytest.skip("fills a small tmpfs, which only root may mount")
    mount = Path(tempfile.mkdtemp(prefix="faramir-full-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        (mount / "filler").write_bytes(b"\0" * (36 << 10))
        dest = mount / "out"
        line = refused("export", dest, "--db", cache["db"])
        assert line.startswith(f"Error: {dest}: the disk is full (") and "export again" in line
        assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no half-made copy left
        for fmt in ("webdataset", "hf"):
            line = refused("export", mount / fmt, "--db", cache["db"], "--format", fmt)
            assert line.startswith(f"Error: {mount / fmt}: the disk is full (") and "export again" in line
            assert not [p for p in (mount / fmt).rglob(".*") if p.name.endswith(".tmp")]  # no half shard left
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        mount.rmdir()


# -- 7. a finetune from the gallery under a head's name ---------------------------------------------------


def test_the_gallery_asks_before_a_finetune_replaces_a_head(cache, tmp_path):
    import time

    app_ = create_app(cache["db"], work=tmp_path / "work")
    client = TestClient(app_, base_url=BASE)
    token = {"X-Faramir-Token": app_.state.token}

    def finetune(**body) -> dict:
        response = client.post("/api/finetune", json={"epochs": 1, **body}, headers=token)
        assert response.status_code == 200, response.text
        job = response.json()
        deadline = time.monotonic() + 900  # a hang guard, not a speed check
        while job["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
            job = client.get(f"/api/finetune/{job['id']}").json()
        return job

    assert finetune(name="mine")["state"] == "done"
    taken = client.post("/api/finetune", json={"epochs": 1, "name": "mine"}, headers=token)
    assert taken.status_code == 409 and "a head named 'mine' exists" in taken.json()["error"]
    fingerprint = registry.head(Cache.open(cache["db"]), "mine")["fingerprint"]
    job = finetune(name="mine", replace=True, base="faramir-v1")  # the same name again, on purpose
    assert job["state"] == "done", job["error"]
    registry.remove_head("mine", cache["db"])
    assert finetune(name="mine")["state"] == "done"  # a name used before, free again: its file is the gallery's
    assert (tmp_path / "work" / "heads" / "mine.pth").is_file()
    assert fingerprint  # the first head was registered under that name
