"""Rescoring the cache with a head checkpoint: parity with `faramir assess`, the pool check, column
writes that leave the embedding data files alone, atomic replacement, and heads list / rm."""

from __future__ import annotations

import json
import os

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from bench.synthetic import row_id
from faramir.checkpoints import load_head_checkpoint
from faramir.cli.app import app
from faramir.config import TINY
from faramir.errors import WeightsError
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import HeadError, NotCached, PoolMismatch
from faramir.store.heads import registry
from faramir.store.heads import rescore as rescoring
from faramir.store.heads.registry import list_heads, remove_head
from faramir.store.heads.rescore import rescore
from faramir.store.heads.scoring import head_outputs, vectors
from faramir.store.queries.ranking import top
from faramir.store.vectors.indexes import index, list_indexes
from faramir.weights import FARAMIR_FILE
from tests.stage2_helpers import errors, head_file, tiny_cache

runner = CliRunner()
EMBEDDING_FIELDS = ("faramir_embedding", "siglip_embedding", "aesthetic_features", "quality_features")


def scores_of(cache, name):
    """{id: (decision, confidence, accept_label, reject_label, logits)} under head `name`."""
    c = registry.columns(cache, name)
    t = cache.images().to_arrow()
    return {
        i: (d, c, a, r, tuple(v))
        for i, d, c, a, r, v in zip(t["id"].to_pylist(), t[c.decision].to_pylist(),
                                    t[c.confidence].to_pylist(), t[c.accept_label].to_pylist(),
                                    t[c.reject_label].to_pylist(), t[c.logits].to_pylist())
    }


def expected_scores(cache, checkpoint):
    """The head run by hand over every cached row: {id: (decision, confidence, labels, logits)}."""
    head = load_head_checkpoint(checkpoint, TINY)[0]
    t = cache.images().to_arrow()
    out = head_outputs(head, vectors(t["faramir_embedding"], TINY.backbone_dim),
                       vectors(t["aesthetic_features"], TINY.aesthetic_dim),
                       vectors(t["quality_features"], TINY.quality_dim))
    return dict(zip(t["id"].to_pylist(), out))


def assert_scores_equal(cache, name, checkpoint):
    got = scores_of(cache, name)
    want = expected_scores(cache, checkpoint)
    assert set(got) == set(want)
    for image_id, out in want.items():
        d, c, _, _, logits = got[image_id]  # float32 rounding: the matmul's blocking follows the batch size
        np.testing.assert_allclose([*logits, d], out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, torch.tensor(out[30]).sigmoid().item(), rtol=0, atol=1e-6)


def data_files(cache) -> dict[int, list[tuple[str, tuple[int, ...]]]]:
    ds = cache.images().to_lance()
    return {f.fragment_id: [(d.path, tuple(d.fields)) for d in f.data_files()] for f in ds.get_fragments()}


# -- parity with faramir assess -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tiny_weights):
    """Six images ingested with the tiny weights (the real stage one), and assess's jsonl of them."""
    from faramir.store.ingestion import ingest_all
    from faramir.weights import load_model
    from tests.conftest import write_images

    root = tmp_path_factory.mktemp("parity")
    write_images(root / "imgs", 4, size=(80, 60))
    write_images(root / "imgs", 2, size=(700, 500), fmt="jpg", seed=1, prefix="big")
    ingest_all([root / "imgs"], db=root / "db", model=load_model(tiny_weights), workers=0)
    result = runner.invoke(app, ["assess", str(root / "imgs"), "--format", "jsonl", "--weights-dir",
                                 str(tiny_weights), "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assessed = {os.path.abspath(r["path"]): r for r in map(json.loads, result.stdout.splitlines())}
    return root / "db", assessed


def test_rescoring_the_cache_equals_faramir_assess(ingested, tiny_weights):
    db, assessed = ingested
    record = rescore(tiny_weights / FARAMIR_FILE, "again", db=db)
    assert record.rows == len(assessed) == 6 and record.pool == "cache's"
    for name in ("faramir-v1", "again"):  # ingest's scores and the rescore's
        rows = top(db, head=name, limit=None).to_pylist()
        assert len(rows) == 6
        for row in rows:
            want = assessed[row["path"]]
            assert row["accepted"] == want["accepted"] and row["label"] == want["label"]
            np.testing.assert_allclose(row["confidence"], want["confidence"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(row["decision"], want["logits"][30], rtol=1e-5, atol=1e-6)
    cache = Cache.open(db)
    c = registry.columns(cache, "again")
    t = cache.images().to_arrow()
    for path, logits in zip(t["paths"].to_pylist(), t[c.logits].to_pylist()):
        np.testing.assert_allclose(logits, assessed[path[0]]["logits"][:30], rtol=1e-5, atol=1e-6)


def test_similar_to_a_new_image_ingests_it_once(ingested, tiny_weights, tmp_path):
    from faramir.store.vectors.nearest import similar
    from tests.conftest import write_images

    db, _ = ingested
    new = write_images(tmp_path, 1, seed=9, prefix="new")[0]
    with pytest.raises(NotCached) as ex:  # the library never ingests: stage one is the caller's
        similar(str(new), db, k=3)
    assert ex.value.path == str(new)
    result = runner.invoke(app, ["similar", str(new), "--db", str(db), "--k", "3", "--format", "jsonl",
                                 "--weights-dir", str(tiny_weights), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert got[0]["path"] == str(new) and got[0]["distance"] == 0.0
    again = similar(str(new), db, k=1).to_pylist()  # now cached: no weights needed
    assert again[0]["id"] == got[0]["id"]


# -- the pool check and checkpoint formats --------------------------------------------------------


@pytest.fixture
def cache(tmp_path):
    return tiny_cache(tmp_path / "db", n=600)


def test_a_head_with_another_pool_is_refused_and_says_how_to_rebuild(cache, tmp_path):
    other = head_file(tmp_path / "other.pth", seed=3, pool_seed=77)
    _, _, pool_fp, _ = load_head_checkpoint(other, TINY)
    cache_pool = cache.get_meta("pool_fingerprint")
    with pytest.raises(PoolMismatch) as ex:
        rescore(other, "other", db=cache)
    assert str(ex.value) == (
        f"{other}: its attention pool (attn_pool.*, fingerprint {pool_fp[:12]}) is not the one this "
        f"cache's FARAMIR embeddings were made with ({cache_pool[:12]}), so its head cannot be applied "
        f"to them. To use this checkpoint, rebuild a cache with it: put it as faramir-v1.pth in a "
        f"weights directory beside the other three files and run 'faramir ingest PATH --weights-dir DIR "
        f"--db NEW_DB'. A head-only file (norm.* and head.*) trained on this cache's pool can be rescored "
        f"into {cache.uri} as it is."
    )
    assert [h.name for h in list_heads(cache)] == ["faramir-v1"]
    result = runner.invoke(app, ["rescore", "--db", cache.uri, "--head", str(other), "--name", "other"])
    assert result.exit_code == 1 and len(errors(result)) == 1 and errors(result)[0].startswith("Error: ")


def test_full_and_head_only_checkpoints_score_like_the_head_run_by_hand(cache, tmp_path):
    full = head_file(tmp_path / "full.pth", seed=5)
    head_only = head_file(tmp_path / "head.pth", seed=6, head_only=True)
    assert rescore(full, "full", db=cache).pool == "cache's"
    assert rescore(head_only, "head-only", db=cache).pool == "head only"
    assert_scores_equal(cache, "full", full)
    assert_scores_equal(cache, "head-only", head_only)


def test_bad_names_and_files_are_refused(cache, tmp_path):
    with pytest.raises(HeadError, match="not a valid head name"):
        rescore(head_file(tmp_path / "h.pth", seed=5), "bad name!", db=cache)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: "):
        rescore(tmp_path / "junk.pth", "junk", db=cache)


# -- how the columns are written ------------------------------------------------------------------


def test_rescoring_adds_column_files_and_leaves_the_embedding_files_alone(cache, tmp_path):
    ds = cache.images().to_lance()
    embedding_ids = {f.id() for f in ds.lance_schema.fields() if f.name() in EMBEDDING_FIELDS}
    before = data_files(cache)
    stats = {path: os.stat(os.path.join(ds.uri, "data", path)) for frag in before.values() for path, _ in frag}
    rescore(head_file(tmp_path / "h.pth", seed=5), "new", db=cache)
    after = data_files(cache)
    assert set(after) == set(before) and len(before) == 2  # same fragments: row ids and indexes stay
    new_ids = {f.id() for f in cache.images().to_lance().lance_schema.fields()
               if f.name().startswith(registry.head(cache, "new")["prefix"])}
    for fragment, files in before.items():
        assert after[fragment][:len(files)] == files  # every old data file still in place, unchanged
        added = after[fragment][len(files):]
        assert len(added) == 1 and set(added[0][1]) == new_ids  # one new file: the new columns only
        holders = [p for p, fields in after[fragment] if embedding_ids & set(fields)]
        assert holders == [p for p, fields in files if embedding_ids & set(fields)]
    for path, st in stats.items():  # and not rewritten in place either
        now = os.stat(os.path.join(ds.uri, "data", path))
        assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_rescoring_an_existing_name_swaps_it_atomically(cache, tmp_path, monkeypatch):
    first, second = head_file(tmp_path / "a.pth", seed=5), head_file(tmp_path / "b.pth", seed=6)
    rescore(first, "curated", db=cache)
    old_prefix = registry.head(cache, "curated")["prefix"]
    before = scores_of(cache, "curated")

    # A crash after the new columns are written but before the heads row moves: nothing changes
    # for readers, and the orphaned columns never get in the way.
    original = rescoring._add_score_columns

    def crash(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(rescoring, "_add_score_columns", crash)
    with pytest.raises(RuntimeError):
        rescore(second, "curated", db=cache)
    monkeypatch.undo()
    assert registry.head(cache, "curated")["prefix"] == old_prefix and scores_of(cache, "curated") == before
    assert_scores_equal(cache, "curated", first)

    record = rescore(second, "curated", db=cache)
    assert record.prefix not in (old_prefix,) and registry.head(cache, "curated")["prefix"] == record.prefix
    assert_scores_equal(cache, "curated", second)
    names = cache.images().schema.names
    assert not any(n.startswith(old_prefix + "_") for n in names)  # the old columns are gone
    assert [h.name for h in list_heads(cache)] == ["faramir-v1", "curated"]


def test_rows_an_ingest_commits_during_a_rescore_are_scored_too(cache, tmp_path, monkeypatch):
    """A concurrent append makes the column commit conflict; the retry scores only what is new."""
    checkpoint = head_file(tmp_path / "h.pth", seed=5)
    table = cache.images()
    extra = table.search().limit(50).to_arrow()
    extra = extra.set_column(0, "id", pa.array([f"{n:064x}" for n in range(50)]))
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if len(calls) == 1:  # another process appends while the first fragment is being scored
            # (through LanceDB's own runtime: this callback runs inside Lance's, which cannot nest)
            lancedb.connect(cache.uri).open_table(schema.IMAGES).add(extra)

    rescore(checkpoint, "busy", db=cache, batch_size=128, progress=progress)
    assert cache.images().count_rows() == 650
    assert_scores_equal(cache, "busy", checkpoint)
    assert calls[-1] == (650, 650)


def test_rows_appended_after_the_column_commit_are_filled_before_the_switch(cache, tmp_path, monkeypatch):
    checkpoint = head_file(tmp_path / "h.pth", seed=5)
    original = rescoring._add_score_columns
    extra = cache.images().search().limit(7).to_arrow()
    extra = extra.set_column(0, "id", pa.array([f"{n:064x}" for n in range(7)]))

    def then_append(cache_, *args, **kwargs):
        n = original(cache_, *args, **kwargs)
        cache_.images().add(extra.drop_columns([c for c in extra.column_names if c.startswith("s_")]))
        return n

    monkeypatch.setattr(rescoring, "_add_score_columns", then_append)
    rescore(checkpoint, "late", db=cache)
    assert cache.images().count_rows() == 607
    assert_scores_equal(cache, "late", checkpoint)


def test_the_vector_index_survives_a_rescore(cache, tmp_path):
    index(cache)
    rescore(head_file(tmp_path / "h.pth", seed=5), "new", db=cache)
    kept = {ix["column"]: ix for ix in list_indexes(cache)}
    assert kept["faramir_embedding"]["indexed_rows"] == 600 and kept["faramir_embedding"]["unindexed_rows"] == 0
    prefix = registry.head(cache, "new")["prefix"]
    assert kept[f"{prefix}_confidence"]["type"] == "BTree"  # the new head's filter columns are indexed


# -- heads list / rm and the CLI ------------------------------------------------------------------


def test_heads_list_and_rm(cache, tmp_path):
    rescore(head_file(tmp_path / "h.pth", seed=5), "extra", db=cache)
    listed = {h.name: h for h in list_heads(cache)}
    assert listed["extra"].rows == 600 and listed["faramir-v1"].pool == "cache's"
    prefix = listed["extra"].prefix
    remove_head("extra", cache)
    assert [h.name for h in list_heads(cache)] == ["faramir-v1"]
    assert not any(n.startswith(prefix) for n in cache.images().schema.names)
    with pytest.raises(Exception, match="no head named 'extra'"):
        remove_head("extra", cache)


def test_cli_rescore_heads_list_and_rm(cache, tmp_path):
    checkpoint = head_file(tmp_path / "h.pth", seed=5)
    result = runner.invoke(app, ["rescore", "--db", cache.uri, "--head", str(checkpoint), "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert "Scored 600 images with head cli" in result.stderr
    result = runner.invoke(app, ["heads", "list", "--db", cache.uri, "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["name"] for line in result.stdout.splitlines()] == ["faramir-v1", "cli"]
    result = runner.invoke(app, ["heads", "rm", "cli", "--db", cache.uri])
    assert result.exit_code == 0 and "Removed head cli" in result.stderr
    result = runner.invoke(app, ["heads", "rm", "cli", "--db", cache.uri])
    assert result.exit_code == 1 and errors(result)[0].startswith("Error: no head named 'cli'")
    assert row_id(0, 0) in {r["id"] for r in top(cache, limit=None).to_pylist()}


def test_the_default_head_cannot_be_removed(cache):
    with pytest.raises(HeadError, match=r"^faramir-v1 is the default head .*; it cannot be removed\. "
                                        r"To replace its scores, run 'faramir rescore --head FILE --name faramir-v1'$"):
        remove_head(schema.DEFAULT_HEAD, cache)
    result = runner.invoke(app, ["heads", "rm", schema.DEFAULT_HEAD, "--db", cache.uri])
    assert result.exit_code == 1 and "cannot be removed" in result.stderr
    assert [h.name for h in list_heads(cache)][0] == schema.DEFAULT_HEAD
    assert len(top(cache, limit=None)) == 600  # the default queries still work
