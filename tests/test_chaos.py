"""The fault-injection harness (tests/chaos/run.py) in its short form: a kill of each writing command
then a rerun, a few races of two writers with a reader looping, the hostile collection, hostile use
of the CLI and the gallery, and the storage faults; each scenario must leave the cache whole. The
full run (>= 100 kills, every pair 20 times) is `python -m tests.chaos`; docs/reliability.md has
its figures.

The harness forks every command from one process that has imported torch and LanceDB but used
neither, so it runs as its own process here (this one has used both). About a minute on 2 idle cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("chaos")
    out = tmp / "report.json"
    env = {**os.environ, "HOME": str(tmp / "home"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tests.chaos", "--quick", "--json", str(out), "--keep", str(tmp / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    result["stdout"] = done.stdout
    return result


def _problems(report: dict, scenario: str, name: str | None = None, cache: str | None = None) -> list:
    return [(t["name"], t["cache"], t["errors"] + t["violations"]) for t in report["trials"]
            if t["scenario"] == scenario and (name is None or t["name"] == name)
            and (cache is None or t["cache"] == cache) and (t["errors"] or t["violations"])]


def test_the_harness_prints_its_tables(report):
    for title in ("SIGKILL at a random moment, then rerun", "two writers started together",
                  "hostile collection", "hostile use of the CLI and the gallery", "storage faults"):
        assert title in report["stdout"]


def test_a_kill_at_any_moment_then_a_rerun_leaves_every_image_once_and_every_head_scored(report):
    rows = {r["command"]: r for r in report["kill"]}
    assert set(rows) == {"ingest (new cache)", "ingest", "rescore", "finetune", "labels import", "index"}
    assert sum(r["killed mid-run"] for r in rows.values()) >= len(rows) // 2, rows
    assert _problems(report, "kill") == []


def test_two_ingests_started_together_on_a_new_cache(report):
    assert _problems(report, "race", "ingest + ingest", "new") == []


def test_a_rescore_during_an_ingest_leaves_no_row_unscored(report):
    assert _problems(report, "race", "ingest + rescore", "existing") == []


def test_other_writers_together_with_a_reader_looping(report):
    others = [t for t in report["trials"] if t["scenario"] == "race"
              and (t["name"], t["cache"]) not in {("ingest + ingest", "new"), ("ingest + rescore", "existing")}]
    assert len(others) >= 3 and all(t["reader"].get("queries", 0) > 0 for t in others)
    assert [(t["name"], t["errors"] + t["violations"]) for t in others if t["errors"] or t["violations"]] == []


def test_a_hostile_collection_is_ingested_whole(report):
    hostile = report["hostile"]
    assert hostile["run"] == "ok", hostile["run"]
    assert [r for r in hostile["rows"] if not r["ok"]] == []
    assert len(hostile["rows"]) == 21


def test_hostile_use_gets_one_line_and_leaves_the_cache_as_it_was(report):
    rows = report["misuse"]["rows"]
    assert len(rows) == 9 and [r for r in rows if r["ok"] is False] == []  # ok None: needs root, skipped


def test_storage_faults_leave_a_cache_that_opens_and_says_so(report):
    rows = report["storage"]["rows"]
    manifests = [r for r in rows if r["fault"] == "zero-byte latest manifest"]
    assert {r["table"] for r in manifests} == {"images", "files", "failures", "heads", "labels", "meta"}
    assert [r for r in rows if r["ok"] is False] == []  # ok None: the disk-full case was skipped (not root)
