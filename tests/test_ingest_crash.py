"""An ingest killed with SIGKILL mid-run, then rerun, leaves exactly the right rows."""

from __future__ import annotations

import os
import signal

import pytest

from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion import ingest_all
from tests import crash
from tests.test_ingest import count_calls

CHILD = """
import sys
from faramir.store.ingestion import ingest_all
imgs, db, weights = sys.argv[1:]
ingest_all([imgs], db=db, weights_dir=weights, device="cpu", workers=1, batch_size=2, commit_every=2)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_ingest_then_rerun_leaves_every_image_exactly_once(tmp_path, tiny_weights, tiny_model):
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    content = crash.collection(imgs)
    crash.kill_mid_run(tmp_path, CHILD, [str(imgs), str(db), str(tiny_weights)], db, timeout=120, poll=0.02)
    survived = crash.images_rows(db)
    assert 0 < survived < len(set(content.values())), "the kill should land mid-run"

    calls = count_calls(tiny_model)
    summary = ingest_all([imgs], db=db, model=tiny_model, workers=0, batch_size=4)
    assert sum(calls) == len(set(content.values())) - survived  # nothing committed is recomputed
    assert summary.failed == 1

    crash.assert_each_image_once(db, content)
    cache = Cache.open(db)
    assert [r["path"] for r in cache.table(schema.FAILURES).to_arrow().to_pylist()] == \
        [os.path.abspath(imgs / "broken.png")]

    again = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert (again.new, again.unchanged, again.failed) == (0, len(content), 1)
