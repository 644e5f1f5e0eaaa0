"""An ingest killed with SIGKILL mid-run, then rerun, leaves exactly the right rows."""

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
import pytest

from store import schema
from store.db import Cache
from store.ingestion import ingest_all
from tests.conftest import write_images
from tests.test_ingest import count_calls

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys
from store.ingestion import ingest_all
imgs, db, weights = sys.argv[1:]
ingest_all([imgs], db=db, weights_dir=weights, device="cpu", workers=1, batch_size=2, commit_every=2)
"""


def _images_rows(db: Path) -> int:
    try:
        return lancedb.connect(db).open_table(schema.IMAGES).count_rows()
    except Exception:  # not created yet
        return 0


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_ingest_then_rerun_leaves_every_image_exactly_once(tmp_path, tiny_weights, tiny_model):
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    originals = write_images(imgs, 24)
    shutil.copy(originals[3], imgs / "copy-of-3.png")
    shutil.copy(originals[20], imgs / "copy-of-20.png")
    (imgs / "broken.png").write_bytes(b"not an image")
    good = sorted(p for p in imgs.iterdir() if p.name != "broken.png")
    content = {os.path.abspath(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in good}

    log = open(tmp_path / "child.log", "wb")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(imgs), str(db), str(tiny_weights)],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _images_rows(db) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, "the ingest ended before it could be killed:\n" + \
            (tmp_path / "child.log").read_text()
        os.killpg(child.pid, signal.SIGKILL)  # the ingest and its decode worker, mid-run
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        log.close()
    survived = _images_rows(db)
    assert 0 < survived < len(set(content.values())), "the kill should land mid-run"

    calls = count_calls(tiny_model)
    summary = ingest_all([imgs], db=db, model=tiny_model, workers=0, batch_size=4)
    assert sum(calls) == len(set(content.values())) - survived  # nothing committed is recomputed
    assert summary.failed == 1

    cache = Cache.open(db)
    ids = cache.images().search().select(["id", "paths"]).limit(None).to_arrow().to_pylist()
    assert len(ids) == len({r["id"] for r in ids}), "duplicate rows"
    assert {r["id"] for r in ids} == set(content.values())
    by_id = {r["id"]: sorted(r["paths"]) for r in ids}
    for path, content_id in content.items():
        assert path in by_id[content_id]
    assert sum(len(p) for p in by_id.values()) == len(content)  # every path listed exactly once
    files = cache.table(schema.FILES).to_arrow().to_pylist()
    assert sorted(r["path"] for r in files) == sorted(content)
    assert all(content[r["path"]] == r["id"] for r in files)
    assert [r["path"] for r in cache.table(schema.FAILURES).to_arrow().to_pylist()] == \
        [os.path.abspath(imgs / "broken.png")]

    again = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert (again.new, again.unchanged, again.failed) == (0, len(content), 1)
