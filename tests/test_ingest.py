"""Stage one into the cache, with tiny generated weights on small generated images."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import ExpertsMismatch
from faramir.store.heads import registry
from faramir.store.ingestion import IngestPlan, IngestProgress, IngestSummary, driver, ingest, ingest_all
from faramir.store.ingestion.failures import failures
from tests.conftest import write_images

runner = CliRunner()


def count_calls(model) -> list[int]:
    """Wrap the experts' forward so a test sees every model run (the batch size of each)."""
    calls: list[int] = []
    forward = model.experts.forward

    def counted(xb, xq):
        calls.append(xb.shape[0])
        return forward(xb, xq)

    model.experts.forward = counted
    return calls


def never_load():
    raise AssertionError("the model was loaded although no file needed reading")


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rows(db, table: str, columns: list[str]) -> list[dict]:
    return Cache.open(db).table(table).search().select(columns).limit(None).to_arrow().to_pylist()


def check_totals(s: IngestSummary) -> None:
    assert s.found == s.new + s.unchanged + s.duplicate + s.failed


def test_reingest_reads_nothing_and_runs_no_model(tmp_path, tiny_model):
    paths = write_images(tmp_path / "imgs", 5)
    db = tmp_path / "db"
    calls = count_calls(tiny_model)
    events = list(ingest([tmp_path / "imgs"], db=db, model=tiny_model, workers=0, batch_size=2))
    assert isinstance(events[0], IngestPlan) and events[0].to_read == 5
    assert any(isinstance(e, IngestProgress) for e in events)
    first = events[-1]
    assert (first.new, first.unchanged, first.duplicate, first.failed) == (5, 0, 0, 0)
    assert sum(calls) == 5
    check_totals(first)

    calls.clear()
    events = list(ingest([tmp_path / "imgs"], db=db, model=never_load, workers=0))
    assert events[0].to_read == 0  # no file is even opened
    second = events[-1]
    assert (second.new, second.unchanged, second.duplicate, second.failed) == (0, 5, 0, 0)
    assert calls == []

    ids = [r["id"] for r in rows(db, schema.IMAGES, ["id"])]
    assert sorted(ids) == sorted(sha(p) for p in paths)
    files = {r["path"]: r["id"] for r in rows(db, schema.FILES, ["path", "id"])}
    assert files == {os.path.abspath(p): sha(p) for p in paths}


def test_duplicates_by_content_are_computed_and_stored_once(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(driver, "COMPACT_AT", 2)
    src = write_images(tmp_path / "imgs", 3)
    shutil.copy(src[0], tmp_path / "imgs" / "img00000-copy.png")  # same batch as the original
    shutil.copy(src[1], tmp_path / "imgs" / "z-copy.png")  # a later batch
    calls = count_calls(tiny_model)
    s = ingest_all([tmp_path / "imgs"], db=tmp_path / "db", model=tiny_model, workers=0,
                   batch_size=2, commit_every=1)
    assert (s.new, s.duplicate) == (3, 2) and sum(calls) == 3
    check_totals(s)

    images = {r["id"]: r for r in rows(tmp_path / "db", schema.IMAGES, ["id", "paths"])}
    assert len(images) == 3
    assert sorted(images[sha(src[0])]["paths"]) == sorted(
        os.path.abspath(tmp_path / "imgs" / n) for n in ("img00000.png", "img00000-copy.png"))
    assert sorted(images[sha(src[1])]["paths"]) == sorted(
        os.path.abspath(tmp_path / "imgs" / n) for n in ("img00001.png", "z-copy.png"))
    assert len(rows(tmp_path / "db", schema.FILES, ["path"])) == 5
    # five commits, compacted at the end
    assert "images" in s.compacted
    assert Cache.open(tmp_path / "db").images().stats()["fragment_stats"]["num_fragments"] == 1


def test_renamed_copied_and_touched_files_are_not_recomputed_changed_ones_are(tmp_path, tiny_model):
    imgs = tmp_path / "imgs"
    paths = write_images(imgs, 4)
    db = tmp_path / "db"
    ingest_all([imgs], db=db, model=tiny_model, workers=0)
    calls = count_calls(tiny_model)

    os.rename(paths[0], imgs / "renamed.png")
    shutil.copy(paths[1], imgs / "copied.png")
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    s = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert calls == [] and (s.new, s.duplicate, s.unchanged) == (0, 2, 3)
    check_totals(s)
    images = {r["id"]: r["paths"] for r in rows(db, schema.IMAGES, ["id", "paths"])}
    assert os.path.abspath(imgs / "renamed.png") in images[sha(imgs / "renamed.png")]
    assert os.path.abspath(imgs / "copied.png") in images[sha(paths[1])]

    shutil.copy(write_images(tmp_path / "new", 1, seed=7)[0], imgs / "new.png")
    changed = write_images(tmp_path / "other", 1, seed=9)[0]
    shutil.copy(changed, paths[3])  # same path, new content
    s = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert s.new == 2 and sum(calls) == 2
    files = {r["path"]: r["id"] for r in rows(db, schema.FILES, ["path", "id"])}
    assert files[os.path.abspath(paths[3])] == sha(changed)
    assert len(rows(db, schema.IMAGES, ["id"])) == 6


def test_broken_files_are_recorded_skipped_and_retried(tmp_path, tiny_model):
    imgs = tmp_path / "imgs"
    good = write_images(imgs, 3)
    (imgs / "garbage.png").write_bytes(b"this is not a PNG")
    (imgs / "empty.jpg").write_bytes(b"")
    whole = (write_images(tmp_path / "tmp", 1, fmt="jpg")[0]).read_bytes()
    (imgs / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    db = tmp_path / "db"

    s = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert (s.new, s.failed) == (3, 3)
    check_totals(s)
    recorded = {Path(f["path"]).name: f for f in failures(db)}
    assert set(recorded) == {"garbage.png", "empty.jpg", "truncated.jpg"}
    assert "empty file" in recorded["empty.jpg"]["reason"]
    assert "not an image format" in recorded["garbage.png"]["reason"]
    assert all(f["failed_at"] is not None for f in recorded.values())
    assert sorted(r["id"] for r in rows(db, schema.IMAGES, ["id"])) == sorted(sha(p) for p in good)

    # unchanged failures are not read again, but still reported
    events = list(ingest([imgs], db=db, model=never_load, workers=0))
    assert events[0].to_read == 0 and events[0].skipped_failures == 3
    assert events[-1].failed == 3 and all(f.recorded_earlier for f in events[-1].failures)

    # on request they are read again (and fail again)
    s = ingest_all([imgs], db=db, model=tiny_model, workers=0, retry_failed=True)
    assert s.failed == 3 and not any(f.recorded_earlier for f in s.failures)

    # a fixed file is retried automatically, ingested, and its failure forgotten
    fixed = write_images(tmp_path / "fix", 1, seed=5)[0]
    shutil.copy(fixed, imgs / "garbage.png")
    s = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert (s.new, s.failed) == (1, 2)
    assert {Path(f["path"]).name for f in failures(db)} == {"empty.jpg", "truncated.jpg"}


def test_missing_files_rows_are_restored_without_running_the_model(tmp_path, tiny_model):
    """What a crash between a chunk's images commit and its files commit leaves behind."""
    imgs = tmp_path / "imgs"
    write_images(imgs, 4)
    db = tmp_path / "db"
    ingest_all([imgs], db=db, model=tiny_model, workers=0)
    Cache.open(db).table(schema.FILES).delete("path LIKE '%img0000[12].png'")
    calls = count_calls(tiny_model)
    s = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert calls == [] and (s.new, s.unchanged, s.duplicate) == (0, 4, 0)
    assert len(rows(db, schema.FILES, ["path"])) == 4
    assert all(len(r["paths"]) == 1 for r in rows(db, schema.IMAGES, ["paths"]))


def test_other_expert_weights_are_refused(tmp_path, tiny_model):
    from faramir.fake_weights import generate
    from faramir.weights import load_model

    write_images(tmp_path / "imgs", 1)
    ingest_all([tmp_path / "imgs"], db=tmp_path / "db", model=tiny_model, workers=0)
    other = load_model(generate(tmp_path / "w1", "tiny", 1))
    write_images(tmp_path / "more", 1, seed=3)
    with pytest.raises(ExpertsMismatch, match="built with other expert weights.*--db"):
        ingest_all([tmp_path / "more"], db=tmp_path / "db", model=other, workers=0)


def test_cached_scores_equal_assess_jsonl(tmp_path, tiny_weights, tiny_model):
    imgs = tmp_path / "imgs"
    paths = write_images(imgs, 3, size=(64, 48)) + write_images(imgs, 2, size=(500, 300), fmt="jpg", prefix="big")
    db = tmp_path / "db"
    result = runner.invoke(app, ["ingest", str(imgs), "--db", str(db), "--weights-dir", str(tiny_weights),
                                 "--device", "cpu", "--workers", "1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "5 new, 0 unchanged, 0 duplicate, 0 failed" in result.stderr

    result = runner.invoke(app, ["assess", str(imgs), "--format", "jsonl", "--weights-dir", str(tiny_weights),
                                 "--device", "cpu", "--workers", "0", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    assessed = {sha(r["path"]): r for r in map(json.loads, result.stdout.splitlines())}

    cache = Cache.open(db)
    (head,) = registry.heads(cache)
    assert head["name"] == schema.DEFAULT_HEAD == "faramir-v1"
    assert head["fingerprint"] == tiny_model.info.head_fingerprint
    p = head["prefix"]
    cached = cache.images().to_arrow().to_pylist()
    assert len(cached) == len(paths) == len(assessed)
    for row in cached:
        want = assessed[row["id"]]
        got_logits = [*row[f"{p}_logits"], row[f"{p}_decision"]]
        assert np.abs(np.array(got_logits) - np.array(want["logits"])).max() <= 1e-5
        assert abs(row[f"{p}_confidence"] - want["confidence"]) <= 1e-5
        assert abs(row["aesthetic_score"] - want["aesthetic_score"]) <= 1e-5
        label = row[f"{p}_accept_label"] if row[f"{p}_confidence"] > 0.5 else row[f"{p}_reject_label"]
        assert label == want["label"]
        assert row["precision"] == "fp32"
        assert row["experts_fingerprint"] == tiny_model.info.experts_fingerprint

    # the embeddings are the model's, as float32
    from faramir import load_image

    by_id = {r["id"]: r for r in cached}
    xb, xq = load_image(paths[0])
    import torch

    feats = tiny_model.features(torch.from_numpy(xb)[None], torch.from_numpy(xq)[None])
    row = by_id[sha(paths[0])]
    for name in ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features"):
        assert np.abs(np.array(row[name]) - getattr(feats, name)[0].numpy()).max() <= 1e-5
    assert (row["width"], row["height"], row["format"], row["mode"]) == (64, 48, "PNG", "RGB")
    assert row["size"] == paths[0].stat().st_size


def test_cli_ingest_reports_failures_and_exits_3_and_failures_lists_them(tmp_path, tiny_weights):
    imgs = tmp_path / "imgs"
    write_images(imgs, 2)
    (imgs / "broken.png").write_bytes(b"nope")
    db = tmp_path / "db"
    args = ["ingest", str(imgs), "--db", str(db), "--weights-dir", str(tiny_weights), "--device", "cpu",
            "--workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output  # as `faramir assess`: some files could not be read
    assert "GENERATED" in result.stderr
    assert f"Failed: {os.path.abspath(imgs / 'broken.png')}: not an image format" in result.stderr
    assert "Ingested 3 files" in result.stderr and "2 new" in result.stderr and "1 failed" in result.stderr
    assert result.stdout == ""

    result = runner.invoke(app, args)
    assert result.exit_code == 3 and "0 new, 2 unchanged" in result.stderr
    assert "--retry-failed" in result.stderr

    (imgs / "broken.png").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "0 new, 2 unchanged, 0 duplicate, 0 failed" in result.stderr

    result = runner.invoke(app, ["failures", "--db", str(db), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["path"] == os.path.abspath(imgs / "broken.png")
    result = runner.invoke(app, ["failures", "--db", str(db)])
    assert result.exit_code == 0 and "reason" in result.stdout and "not an image format" in result.stdout


def test_env_var_names_the_cache(tmp_path, tiny_weights, monkeypatch):
    write_images(tmp_path / "imgs", 1)
    monkeypatch.setenv("FARAMIR_DB", str(tmp_path / "env-db"))
    result = runner.invoke(app, ["ingest", str(tmp_path / "imgs"), "--weights-dir", str(tiny_weights),
                                 "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert len(rows(tmp_path / "env-db", schema.IMAGES, ["id"])) == 1


def test_ingest_indexes_the_filter_columns_and_keeps_them_current(tmp_path, tiny_model):
    from faramir.store.vectors.indexes import list_indexes

    db = tmp_path / "db"
    first = ingest_all([write_images(tmp_path / "a", 4)[0].parent], db=db, model=tiny_model, workers=0)
    cols = registry.columns(Cache.open(db), schema.DEFAULT_HEAD)
    prefix = cols.prefix
    wanted = {"id", "aesthetic_score", f"{prefix}_confidence", f"{prefix}_accept_label", f"{prefix}_reject_label"}
    assert set(first.indexed) == wanted
    indexes = {ix["column"]: ix for ix in list_indexes(db)}
    assert set(indexes) == wanted  # no ANN index below faramir.store.vectors.indexes.ANN_MIN_ROWS rows
    assert all(ix["indexed_rows"] == 4 for ix in indexes.values())

    ingest_all([write_images(tmp_path / "b", 3, seed=1)[0].parent], db=db, model=tiny_model, workers=0)
    indexes = {ix["column"]: ix for ix in list_indexes(db)}
    assert all((ix["indexed_rows"], ix["unindexed_rows"]) == (7, 0) for ix in indexes.values()), indexes

    again = ingest_all([tmp_path / "a"], db=db, model=tiny_model, workers=0)  # nothing new: nothing to do
    assert again.indexed == []


def test_a_model_that_fails_to_load_leaves_no_cache_behind(tmp_path):
    from faramir.errors import WeightsNotFound

    write_images(tmp_path / "imgs", 2)
    db = tmp_path / "new.lancedb"
    with pytest.raises(WeightsNotFound):
        ingest_all([tmp_path / "imgs"], db=db, weights_dir=tmp_path / "no-weights", device="cpu", workers=0)
    assert not db.exists()
    result = runner.invoke(app, ["ingest", str(tmp_path / "imgs"), "--db", str(db), "--weights-dir",
                                 str(tmp_path / "no-weights"), "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 1 and "FARAMIR weights missing" in result.stderr
    assert not db.exists()


def test_an_ingest_that_finds_nothing_creates_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    s = ingest_all([tmp_path / "empty"], db=tmp_path / "db", model=never_load, workers=0)
    assert (s.found, s.new) == (0, 0) and not (tmp_path / "db").exists()
