"""Writers at the same time: creating a cache, two ingests, an ingest racing a rescore. Nothing is
lost, duplicated or left unscored, and every run reports what it committed itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.heads import registry
from faramir.store.heads.rescore import rescore
from faramir.store.ingestion import ingest, ingest_all
from faramir.store.queries.counting import count
from faramir.store.queries.ranking import top
from tests.conftest import write_images
from tests.stage2_helpers import head_file, tiny_cache

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _together(script: str, args_per_process: list[list[str]], timeout: float = 300) -> list[dict]:
    """Run `script` in one process per argument list, all released at the same instant (after
    their imports); each prints one JSON line, returned in order."""
    start = f"{time.time() + 6:.3f}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, start, *args], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in args_per_process]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


OPEN = """
import json, sys, time
from faramir.store.cache import Cache
start, db = float(sys.argv[1]), sys.argv[2]
time.sleep(max(0.0, start - time.time()))
try:
    Cache.open(db, create=True)
    print(json.dumps({"error": None}))
except Exception as ex:
    print(json.dumps({"error": f"{type(ex).__name__}: {ex}"}))
"""


def test_processes_creating_one_new_cache_together_all_succeed(tmp_path):
    for trial in range(3):
        db = str(tmp_path / f"db{trial}")
        errors = [r["error"] for r in _together(OPEN, [[db]] * 4)]
        assert errors == [None] * 4
        cache = Cache.open(db)
        assert cache.get_meta("schema_version") == str(schema.SCHEMA_VERSION)
        for name in (schema.META, schema.FILES, schema.FAILURES, schema.HEADS, schema.LABELS):
            assert cache.read(name).num_rows == (1 if name == schema.META else 0)


def test_tables_are_made_one_process_at_a_time(tmp_path):
    """Lance turns a second concurrent create of a table into an overwrite of the first's (tests/chaos/run.py
    saw it fail the first's next write): creation waits for the lock another process holds."""
    import fcntl
    import threading

    from faramir.store.cache import CREATE_LOCK

    db = tmp_path / "db"
    db.mkdir()
    with open(db / CREATE_LOCK, "a") as held:  # another process, making a table now
        fcntl.flock(held, fcntl.LOCK_EX)
        opener = threading.Thread(target=Cache.open, args=(db,), kwargs={"create": True})
        opener.start()
        opener.join(1.5)
        assert opener.is_alive() and not Cache(str(db)).has_table(schema.META)  # waiting, nothing made
    opener.join(60)
    assert not opener.is_alive()
    assert Cache.open(db).get_meta("schema_version") == str(schema.SCHEMA_VERSION)


INGEST = """
import dataclasses, json, sys, time
start, imgs, db, weights = sys.argv[1:]
from faramir.weights import load_model
from faramir.store.ingestion import ingest_all
model = load_model(weights)
time.sleep(max(0.0, float(start) - time.time()))
s = ingest_all([imgs], db=db, model=model, workers=0, batch_size=2, commit_every=2)
print(json.dumps({k: getattr(s, k) for k in ("found", "new", "unchanged", "duplicate", "failed")}))
"""


def test_two_ingests_of_one_folder_into_a_new_cache(tmp_path, tiny_weights):
    imgs = tmp_path / "imgs"
    write_images(imgs, 16)
    db = tmp_path / "db"
    a, b = _together(INGEST, [[str(imgs), str(db), str(tiny_weights)]] * 2)
    for s in (a, b):
        assert s["found"] == 16 == s["new"] + s["unchanged"] + s["duplicate"] + s["failed"]
    assert a["new"] + b["new"] == 16, (a, b)  # each counts what it committed itself
    cache = Cache.open(db)
    rows = cache.read(schema.IMAGES, ["id", "paths"]).to_pylist()
    assert len(rows) == len({r["id"] for r in rows}) == 16
    assert sorted(p for r in rows for p in r["paths"]) == sorted(os.path.abspath(p) for p in imgs.iterdir())
    assert cache.read(schema.FILES).num_rows == 16
    assert len(registry.heads(cache)) == 1 and count(cache) == 16


def test_an_ingest_counts_only_what_it_committed(tmp_path, tiny_model):
    """Another process commits the same images while this run computes them: they are not "new" here."""
    imgs = tmp_path / "imgs"
    write_images(imgs, 6)
    db = tmp_path / "db"
    first = ingest([imgs], db=db, model=tiny_model, workers=0, batch_size=2, commit_every=100)
    next(first), next(first)  # planned, the first batch computed, nothing committed yet
    other = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert other.new == 6
    *_, mine = first
    assert (mine.found, mine.new, mine.unchanged, mine.duplicate) == (6, 0, 6, 0)
    rows = Cache.open(db).read(schema.IMAGES, ["paths"]).to_pylist()
    assert len(rows) == 6 and all(len(r["paths"]) == 1 for r in rows)


def test_a_copy_committed_by_another_run_counts_as_a_duplicate(tmp_path, tiny_model):
    imgs, copies = tmp_path / "imgs", tmp_path / "copies"
    write_images(imgs, 4)
    write_images(copies, 4)  # the same content under other paths
    db = tmp_path / "db"
    first = ingest([imgs], db=db, model=tiny_model, workers=0, batch_size=2, commit_every=100)
    next(first), next(first)
    assert ingest_all([copies], db=db, model=tiny_model, workers=0).new == 4
    *_, mine = first
    assert (mine.new, mine.duplicate, mine.unchanged) == (0, 4, 0)
    rows = Cache.open(db).read(schema.IMAGES, ["paths"]).to_pylist()
    assert len(rows) == 4 and all(len(r["paths"]) == 2 for r in rows)


# -- every registered head scores every row -------------------------------------------------------


def _unscored(cache: Cache) -> dict[str, int]:
    ds = cache.dataset(schema.IMAGES)
    return {h["name"]: ds.count_rows(f"{h['prefix']}_confidence IS NULL") for h in registry.heads(cache)}


def test_rows_an_ingest_commits_after_a_rescore_registered_its_head_are_scored(tmp_path, tiny_model):
    db = tmp_path / "db"
    ingest_all([write_images(tmp_path / "a", 4)[0].parent], db=db, model=tiny_model, workers=0)
    late = ingest([write_images(tmp_path / "b", 6, seed=1)[0].parent], db=db, model=tiny_model, workers=0,
                  batch_size=2, commit_every=100)
    next(late), next(late)  # the ingest knows its heads (faramir-v1 only) and has computed a batch
    rescore(head_file(tmp_path / "h.pth", seed=5, head_only=True), "new", db=db)
    *_, summary = late
    assert summary.new == 6
    cache = Cache.open(db)
    assert _unscored(cache) == {"faramir-v1": 0, "new": 0}
    assert count(cache, head="new") == 10


def test_an_ingest_commits_while_a_rescore_has_added_columns_but_not_yet_registered_its_head(tmp_path, tiny_model):
    """A rescore adds its columns, then registers its head: rows an ingest commits in between have
    no scores there yet (tests/chaos/run.py: LanceDB refused such rows as "variable length vectors")."""
    db = tmp_path / "db"
    ingest_all([write_images(tmp_path / "a", 4)[0].parent], db=db, model=tiny_model, workers=0)
    cache = Cache.open(db)
    cache.images().to_lance().add_columns(schema.score_fields("s_inflight_1"))  # the head is not registered yet
    s = ingest_all([write_images(tmp_path / "b", 3, seed=1)[0].parent], db=db, model=tiny_model, workers=0)
    assert (s.new, s.failed) == (3, 0)
    rows = Cache.open(db).read(schema.IMAGES, ["s_faramir_v1_1_confidence", "s_inflight_1_logits"])
    assert rows.num_rows == 7 and rows.column(0).null_count == 0
    assert rows.column(1).null_count == 7  # left for the rescore, which fills every head's gaps once registered


def _gap(cache: Cache, n: int = 5) -> None:
    """Rows committed without any head's scores: what an ingest killed before filling them leaves."""
    rows = cache.images().search().limit(n).to_arrow()
    rows = rows.set_column(0, "id", pa.array([f"{i:064x}" for i in range(n)]))
    cache.images().add(rows.drop_columns([c for c in rows.column_names if c.startswith("s_")]))


def test_queries_warn_about_rows_a_head_has_not_scored(tmp_path):
    from faramir.store.errors import UnscoredRows

    cache = tiny_cache(tmp_path / "db", n=40)
    _gap(cache)
    with pytest.warns(UnscoredRows, match=r"5 of 45 cached images have no scores under head faramir-v1; "
                                          r"run 'faramir ingest' or 'faramir rescore' on "):
        assert len(top(cache, limit=None)) == 40
    result = runner.invoke(app, ["stats", "--db", cache.uri])
    assert result.exit_code == 0 and "5 of 45 cached images have no scores under head faramir-v1" in result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnscoredRows)
        cache2 = tiny_cache(tmp_path / "db2", n=10)
        top(cache2)  # no gap: no warning
        from faramir.store.heads.unscored import fill_gaps

        assert fill_gaps(cache) == 5
        top(cache)  # the same open cache: the count kept for the old version is not reused


def test_an_ingest_with_nothing_to_read_fills_a_gap(tmp_path, tiny_model):
    imgs = tmp_path / "imgs"
    write_images(imgs, 4)
    db = tmp_path / "db"
    ingest_all([imgs], db=db, model=tiny_model, workers=0)
    cache = Cache.open(db)
    rescore(head_file(tmp_path / "h.pth", seed=5, head_only=True), "second", db=cache)
    _gap(cache, 3)
    assert _unscored(cache) == {"faramir-v1": 3, "second": 3}

    def never_load():
        raise AssertionError("filling scores needs no model")

    s = ingest_all([imgs], db=db, model=never_load, workers=0)
    assert (s.new, s.unchanged) == (0, 4)
    assert _unscored(Cache.open(db)) == {"faramir-v1": 0, "second": 0}


def test_a_rescore_fills_the_gaps_of_every_head(tmp_path):
    cache = tiny_cache(tmp_path / "db", n=40)
    rescore(head_file(tmp_path / "h1.pth", seed=5), "one", db=cache)
    _gap(cache, 4)
    rescore(head_file(tmp_path / "h2.pth", seed=6), "two", db=cache)
    assert _unscored(cache) == {"faramir-v1": 0, "one": 0, "two": 0}
