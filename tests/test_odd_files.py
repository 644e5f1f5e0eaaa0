"""Files a real collection holds that are not plain images with plain names: names that are not
UTF-8 (Linux paths are bytes), FIFOs, sockets and other non-regular files named like images, and
very thin images. None of them may stop a run, hang it, or crash a command that prints it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion import ingest_all
from faramir.store.ingestion.failures import failures
from tests.conftest import write_images

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# A file name that is not valid UTF-8 (Latin-1 "café"), as Python sees it: os.fsdecode's
# surrogate escapes, which is what os.listdir and sys.argv give for such a name.
LATIN1 = os.fsdecode(b"caf\xe9.png")


def _bytes_name(folder: Path, raw: bytes) -> str:
    return os.path.join(os.fsdecode(os.fsencode(folder)), os.fsdecode(raw))


# -- names that are not UTF-8 --------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/art/plain.png", "/art/café ☃.png", "/art/a\tb\nc.png", "/art/100%.png", "/art/file:x.png",
    os.fsdecode(b"/art/caf\xe9.png"), os.fsdecode(b"/art/\xff\xfe/x.png"), os.fsdecode(b"/a/%FF\xff.png"),
    os.fsdecode(b"/art/\xed\xa0\x80.png"),  # an encoded surrogate: not UTF-8 either
])
def test_stored_paths_round_trip_and_valid_utf8_ones_are_stored_as_they_are(path):
    stored = schema.path_to_column(path)
    stored.encode("utf-8")  # always valid UTF-8 (Arrow's string columns require it)
    assert schema.path_from_column(stored) == path
    assert os.fsencode(schema.path_from_column(stored)) == os.fsencode(path)
    if path.encode("utf-8", "surrogateescape").decode("utf-8", "replace") == path:
        assert stored == path


def test_stored_paths_never_collide():
    names = [os.fsdecode(b"/art/caf\xe9.png"), "/art/caf%E9.png", "/art/café.png", "file:///art/caf%E9.png",
             os.fsdecode(b"/art/caf\xc3.png"), "/art/caf\\xe9.png"]
    stored = [schema.path_to_column(n) for n in names]
    assert len(set(stored)) == len(names)


def test_a_file_name_that_is_not_utf8_is_ingested_found_again_and_searchable(tmp_path, tiny_model):
    imgs = tmp_path / "imgs"
    write_images(imgs, 3)
    odd = _bytes_name(imgs, b"caf\xe9.png")
    Image.open(imgs / "img00000.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(odd)
    bad = _bytes_name(imgs, b"\xff broken.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    db = tmp_path / "db"

    s = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert (s.found, s.new, s.failed) == (5, 4, 1)
    assert [os.fsencode(schema.path_from_column(f.path)) for f in s.failures] == [os.fsencode(bad)]
    cache = Cache.open(db)
    files = cache.read(schema.FILES, ["path"]).column("path").to_pylist()
    assert sorted(os.fsencode(schema.path_from_column(p)) for p in files) == sorted(
        os.fsencode(os.path.abspath(p)) for p in [*imgs.glob("img*.png"), odd])
    (listed,) = failures(db)
    assert schema.path_from_column(listed["path"]) == bad

    again = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert (again.new, again.unchanged, again.failed, again.duplicate) == (0, 4, 1, 0)

    import faramir.store as store

    near = store.similar(odd, db, k=2)
    assert schema.path_from_column(near.column("path")[0].as_py()) == odd
    assert near.column("distance")[0].as_py() == 0.0


def test_cli_prints_names_that_are_not_utf8_and_takes_them_back(tmp_path, tiny_weights):
    """Through a real process: argv and stdout are bytes there, as in a terminal."""
    imgs = tmp_path / "imgs"
    write_images(imgs, 2)
    odd = _bytes_name(imgs, b"caf\xe9.png")
    os.rename(imgs / "img00001.png", odd)
    with open(_bytes_name(imgs, b"\xff.png"), "wb") as f:
        f.write(b"not an image")
    db = str(tmp_path / "db")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}

    def faramir(*args):
        return subprocess.run([sys.executable, "-m", "faramir.cli", *map(os.fsencode, args)], cwd=REPO, env=env,
                              capture_output=True, timeout=300)

    done = faramir("ingest", imgs, "--db", db, "--weights-dir", tiny_weights, "--device", "cpu", "--workers", "0")
    assert done.returncode == 3, done.stderr.decode()  # one file failed
    stored_odd = schema.path_to_column(odd)
    stored_bad = schema.path_to_column(_bytes_name(imgs, b"\xff.png"))
    assert f"Failed: {stored_bad}: not an image format".encode() in done.stderr
    assert b"1 new" in done.stderr or b"2 new" in done.stderr

    done = faramir("similar", odd, "--db", db, "--k", "1", "--format", "tsv")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode("utf-8").split("\t")[0] == stored_odd
    for fmt in ("table", "csv", "jsonl"):
        done = faramir("top", "--db", db, "--format", fmt)
        assert done.returncode == 0, done.stderr.decode()
        assert stored_odd in done.stdout.decode("utf-8")
    done = faramir("similar", stored_odd, "--db", db, "--k", "1", "--format", "jsonl")  # the printed form works too
    assert done.returncode == 0 and json.loads(done.stdout)["path"] == stored_odd
    done = faramir("failures", "--db", db)
    assert done.returncode == 0 and stored_bad in done.stdout.decode("utf-8")
    done = faramir("assess", imgs, "--weights-dir", tiny_weights, "--device", "cpu", "--workers", "0")
    assert done.returncode == 3 and b"Traceback" not in done.stderr
    assert len(done.stdout.decode("utf-8").splitlines()) == 2


def test_export_copies_a_file_whose_name_is_not_utf8_under_its_own_name(tmp_path, tiny_model):
    import faramir.store as store

    imgs = tmp_path / "imgs"
    write_images(imgs, 1)
    odd = _bytes_name(imgs, b"caf\xe9.png")
    os.rename(imgs / "img00000.png", odd)
    ingest_all([imgs], db=tmp_path / "db", model=tiny_model, workers=0)
    result = store.export(tmp_path / "out", tmp_path / "db")
    assert result.written == 1 and not result.missing
    assert os.listdir(os.fsencode(tmp_path / "out")) == [b"caf\xe9.png"]
    store.export(tmp_path / "out.csv", tmp_path / "db")
    assert schema.path_to_column(odd) in (tmp_path / "out.csv").read_text(encoding="utf-8")


# -- files that are not regular files ------------------------------------------------------------


def _in_thread(fn, timeout: float = 120):
    """fn() in a daemon thread; (finished, result or exception)."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as ex:  # handed to the test
            box["error"] = ex

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in box:
        raise box["error"]
    return not thread.is_alive(), box.get("result")


def _release(fifo: Path) -> None:
    """Let a reader blocked on `fifo` go (a writer opens and closes it), so a failed test ends."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("recursive", [True, False])
def test_a_fifo_named_like_an_image_is_recorded_never_read(tmp_path, tiny_model, recursive):
    imgs = tmp_path / "imgs"
    write_images(imgs, 2)
    fifo = imgs / "pipe.png"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(imgs / "sock.jpg"))
    try:
        finished, s = _in_thread(lambda: ingest_all([imgs], db=tmp_path / "db", model=tiny_model, workers=0,
                                                    recursive=recursive))
    finally:
        _release(fifo)
        sock.close()
    assert finished, "ingest blocked on a FIFO"
    assert (s.new, s.failed) == (2, 2)
    reasons = {Path(f["path"]).name: f["reason"] for f in failures(tmp_path / "db")}
    assert reasons == {"pipe.png": "not a regular file (a FIFO); only regular files are read",
                       "sock.jpg": "not a regular file (a socket); only regular files are read"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_assess_and_load_image_never_block_on_a_fifo(tmp_path, tiny_weights):
    from faramir import load_image
    from faramir.errors import ImageLoadError

    write_images(tmp_path, 1)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    try:
        finished, result = _in_thread(lambda: runner.invoke(app, [
            "assess", str(tmp_path), str(fifo), "--weights-dir", str(tiny_weights), "--device", "cpu",
            "--workers", "0"]))
        assert finished, "assess blocked on a FIFO"
        assert result.exit_code == 3 and len(result.stdout.splitlines()) == 1
        assert f"{fifo}: not a regular file (a FIFO); only regular files are read" in result.stderr

        def load():
            with pytest.raises(ImageLoadError, match="not a regular file"):
                load_image(fifo)

        assert _in_thread(load)[0], "load_image blocked on a FIFO"
    finally:
        _release(fifo)


def test_a_folder_named_like_an_image_is_a_folder(tmp_path, tiny_model):
    imgs = tmp_path / "imgs"
    write_images(imgs / "album.png", 2)
    s = ingest_all([imgs], db=tmp_path / "db", model=tiny_model, workers=0, recursive=True)
    assert (s.found, s.new, s.failed) == (2, 2, 0)
    s = ingest_all([imgs], db=tmp_path / "db", model=tiny_model, workers=0)  # not recursive: not a file
    assert (s.found, s.failed) == (0, 0)


# -- thin images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1000), (1, 60000), (1000, 1), (60000, 1), (1, 1)])
def test_thin_images_fit_in_at_least_one_pixel(size):
    import io

    from faramir.preprocess import calculate_fit, decode

    w, h = calculate_fit(*size, 384, 384)
    assert 1 <= w <= 384 and 1 <= h <= 384
    data = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(data, "PNG")
    xb, xq, facts = decode(data.getvalue(), "thin.png")
    assert (facts.width, facts.height) == size
    assert xb.shape == (3, 384, 384) and xq.shape == (3, 512, 512)
    assert np.isfinite(xb).all() and xb.max() > 0


def test_thin_images_are_ingested(tmp_path, tiny_model):
    for size in ((1, 1000), (1, 60000), (1000, 1)):
        Image.new("RGB", size, (200, 10, 30)).save(tmp_path / f"thin-{size[0]}x{size[1]}.png")
    s = ingest_all([tmp_path], db=tmp_path / "db", model=tiny_model, workers=0)
    assert (s.new, s.failed) == (3, 0), [f.reason for f in s.failures]
