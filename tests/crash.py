"""An ingest killed with SIGKILL mid-run, for the tests that rerun it afterwards (the local ingest in
tests/test_ingest_crash.py, the Ray one in tests/test_ray_ingest.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb

from faramir.store import schema
from faramir.store.cache import Cache
from tests.conftest import write_images

REPO = Path(__file__).resolve().parents[1]


def collection(imgs: Path) -> dict[str, str]:
    """24 images, copies of two of them and a file that is no image, in `imgs`; {absolute path:
    sha256} of the good files."""
    originals = write_images(imgs, 24)
    shutil.copy(originals[3], imgs / "copy-of-3.png")
    shutil.copy(originals[20], imgs / "copy-of-20.png")
    (imgs / "broken.png").write_bytes(b"not an image")
    good = sorted(p for p in imgs.iterdir() if p.name != "broken.png")
    return {os.path.abspath(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in good}


def images_rows(db: Path) -> int:
    try:  # read only: the child may be creating the cache's tables right now
        return lancedb.connect(db).open_table(schema.IMAGES).count_rows()
    except Exception:  # not created yet
        return 0


def kill_mid_run(tmp_path: Path, script: str, args: list[str], db: Path, *, timeout: float, poll: float) -> int:
    """Run `script` (an ingest into `db`) in a new session, SIGKILL the whole session once two
    images are committed, and return its session id; the child's output is in tmp_path/child.log."""
    log = open(tmp_path / "child.log", "wb")
    child = subprocess.Popen([sys.executable, "-c", script, *args],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while images_rows(db) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(poll)
        assert child.poll() is None, "the ingest ended before it could be killed:\n" + \
            (tmp_path / "child.log").read_text()
        os.killpg(child.pid, signal.SIGKILL)  # the ingest and every process it started, mid-run
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        log.close()
    return child.pid


def assert_each_image_once(db: Path, content: dict[str, str]) -> None:
    """The images table holds each content once, listing exactly its paths; files lists each path."""
    cache = Cache.open(db)
    ids = cache.read(schema.IMAGES, ["id", "paths"]).to_pylist()
    assert len(ids) == len({r["id"] for r in ids}), "duplicate rows"
    assert {r["id"] for r in ids} == set(content.values())
    by_id = {r["id"]: sorted(r["paths"]) for r in ids}
    for path, content_id in content.items():
        assert path in by_id[content_id]
    assert sum(len(p) for p in by_id.values()) == len(content)  # every path listed exactly once
    files = cache.read(schema.FILES, ["path", "id"]).to_pylist()
    assert sorted(r["path"] for r in files) == sorted(content)
    assert all(content[r["path"]] == r["id"] for r in files)
