"""The curator's loop on a real cache (ingested from generated images with tiny weights): what to
label next (`store.labels.queue`), what a new head changes (`heads_diff`), and the map
(`store.map`): fitted once, new rows placed by the ingest, old places never moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import cli
from tests.gallery_helpers import ingested_cache, spread_head

HEAD = "spread"
runner = CliRunner()


def near_copies(original: Path, dest: Path, n: int) -> list[Path]:
    """`n` near-copies of an image: each with a few pixels changed (another content, nearly the same picture)."""
    dest.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(Image.open(original).convert("RGB")).copy()
    out = []
    for i in range(n):
        copy = pixels.copy()
        copy[i, i] = (copy[i, i].astype(int) + 1 + i) % 256
        path = dest / f"copy{i}.png"
        Image.fromarray(copy).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("curating")
    db = ingested_cache(root, tiny_weights, n=30)
    spread_head(db, tiny_weights, HEAD)
    return root, db


def reference_priority(db, head: str, threshold: float, vs: str | None = None) -> dict[str, float]:
    """{id: priority} of every image, from its scores read through `top` and the images table."""
    from faramir.store.cache import Cache
    from faramir.store.heads import registry
    from faramir.store.labels.queue import signals, vectors

    cache = Cache.open(db)
    cols = registry.columns(cache, head)
    rows = cache.read("images", ["id", cols.decision, cols.logits, *( [registry.columns(cache, vs).decision] if vs else [])])
    other = rows.column(registry.columns(cache, vs).decision).to_numpy() if vs else None
    s = signals(rows.column(cols.decision).to_numpy(), vectors(rows.column(cols.logits), 30).astype(float), threshold,
                other)
    return dict(zip(rows.column("id").to_pylist(), s["priority"]))


def test_the_queue_asks_first_for_the_most_uncertain_and_never_twice_for_one_picture(cache, tmp_path, tiny_weights):
    from faramir.store.ingestion import ingest_all
    from faramir.store.labels.queue import queue
    from faramir.store.labels.table import set_labels

    root, db = cache
    db = shutil.copytree(db, tmp_path / "db")
    priority = reference_priority(db, HEAD, 0.5)
    best = max(priority, key=priority.get)
    first = queue(db, limit=8, head=HEAD, threshold=0.5)
    assert first.rows.column("id")[0].as_py() == best  # the highest priority comes first
    assert first.rows.column("priority").to_pylist() == pytest.approx([priority[i] for i in first.rows.column("id").to_pylist()])
    # near-copies of the most uncertain picture: they top the priorities, yet the queue asks for one of them
    original = next(p for p in (root / "imgs").iterdir() if _id(p) == best)
    copies = near_copies(original, tmp_path / "copies", 5)
    ingest_all([tmp_path / "copies"], db=db, weights_dir=tiny_weights, device="cpu", workers=0, batch_size=12)
    same = {best, *(_id(p) for p in copies)}
    priority = reference_priority(db, HEAD, 0.5)
    by_priority = sorted(priority, key=lambda i: -priority[i])[:8]
    assert len(same & set(by_priority)) >= 4  # without the diversity these would crowd the queue
    ids = queue(db, limit=8, head=HEAD, threshold=0.5).rows.column("id").to_pylist()
    assert len(ids) == 8 and len(set(ids)) == 8
    assert len(same & set(ids)) == 1
    # labels given are ordinary labels: a labelled image is never asked for again
    set_labels(ids[:3], "accept", db)
    again = queue(db, limit=8, head=HEAD, threshold=0.5).rows.column("id").to_pylist()
    assert not set(again) & set(ids[:3])


def test_a_second_head_s_disagreement_and_the_cli(cache):
    from faramir.store.labels.queue import queue

    _, db = cache
    result = queue(db, limit=6, head=HEAD, threshold=0.5, vs="faramir-v1")
    priority = reference_priority(db, HEAD, 0.5, vs="faramir-v1")
    assert result.rows.column("id")[0].as_py() == max(priority, key=priority.get)
    assert all(0 <= d <= 1 for d in result.rows.column("disagreement").to_pylist())
    lines = cli("queue", "--db", db, "--head", HEAD, "--vs", "faramir-v1", "--limit", 6, "--format", "jsonl").splitlines()
    assert [json.loads(line)["id"] for line in lines] == result.rows.column("id").to_pylist()
    from faramir.cli.app import app

    bad = runner.invoke(app, ["queue", "--db", str(db), "--head", HEAD, "--vs", HEAD])
    assert bad.exit_code == 1 and "--vs names the queue's own head" in bad.output


def test_heads_diff_counts_the_flips_by_reason_and_the_labels_each_head_gets_right(cache, tmp_path):
    from faramir.store.heads.compare import heads_diff
    from faramir.store.heads.evaluate import evaluate
    from faramir.store.labels.table import set_labels
    from faramir.store.queries.ranking import top

    _, db = cache
    db = shutil.copytree(db, tmp_path / "db")
    t = 0.5
    a = {r["id"]: r for r in top(db, head="faramir-v1", threshold=t, limit=None).to_pylist()}
    b = {r["id"]: r for r in top(db, head=HEAD, threshold=t, limit=None).to_pylist()}
    ids = sorted(a)
    set_labels(ids[:10], "accept", db)
    set_labels(ids[10:20], "2d_bad", db)
    diff = heads_diff("faramir-v1", HEAD, db, threshold=t)
    flips = [i for i in ids if a[i]["accepted"] != b[i]["accepted"]]
    assert flips, "the two heads must disagree somewhere for this test to mean anything"
    assert diff.accept_to_reject == sum(a[i]["accepted"] for i in flips)
    assert diff.reject_to_accept == sum(b[i]["accepted"] for i in flips)
    want = {}
    for i in flips:
        key = ("reject_to_accept" if b[i]["accepted"] else "accept_to_reject", b[i]["label"])
        want[key] = want.get(key, 0) + 1
    assert {(e["flip"], e["reason"]): e["count"] for e in diff.by_reason} == want
    for head, right in (("faramir-v1", diff.right_a), (HEAD, diff.right_b)):
        c = evaluate(head, db=db, threshold=t).confusion
        assert right == c["tp"] + c["tn"]
    assert diff.labelled == 20 and diff.right_b - diff.right_a == diff.fixed - diff.broken
    assert json.loads(cli("heads", "diff", "faramir-v1", HEAD, "--db", db, "--format", "json")) == \
        json.loads(json.dumps(diff.to_dict()))
    assert "accept → reject" in cli("heads", "diff", "faramir-v1", HEAD, "--db", db)


def test_the_map_stays_put_when_rows_are_added_and_places_them_near_their_likes(cache, tmp_path, tiny_weights):
    pytest.importorskip("umap", reason="faramir map needs the 'map' extra: pip install 'faramir[map]'")
    from faramir.store.cache import Cache
    from faramir.store.ingestion import ingest_all
    from faramir.store.map.layout import map_layout

    root, db = cache
    db = shutil.copytree(db, tmp_path / "db")
    info = map_layout(db, sample=20, seed=1)
    assert info.fitted and info.rows == 30 and info.sample == 20 and info.placed == 10
    before = _layout(db)
    assert len(before) == 30 and all(np.isfinite(xy).all() for xy in before.values())
    assert map_layout(db, sample=20, seed=1).placed == 0  # nothing new: nothing moves
    original = sorted((root / "imgs").iterdir())[3]
    copies = near_copies(original, tmp_path / "copies", 2)
    ingest_all([tmp_path / "copies"], db=db, weights_dir=tiny_weights, device="cpu", workers=0, batch_size=12)
    after = _layout(db)
    assert len(after) == 32
    assert {i: after[i] for i in before} == before  # old rows unmoved, to the bit
    spread = np.median([np.hypot(p[0] - q[0], p[1] - q[1]) for p in before.values() for q in before.values()])
    o = after[_id(original)]
    for copy in copies:  # placed (by the ingest, with the stored model) beside the picture they copy
        assert np.hypot(after[_id(copy)][0] - o[0], after[_id(copy)][1] - o[1]) < spread / 2
    assert Cache.open(db).get_meta("schema_version") == "5"
    refit = map_layout(db, sample=32, refit=True, seed=1)
    assert refit.fitted and refit.rows == 32


def test_the_map_command(cache, tmp_path):
    pytest.importorskip("umap", reason="faramir map needs the 'map' extra: pip install 'faramir[map]'")
    from faramir.cli.app import app

    _, db = cache
    db = shutil.copytree(db, tmp_path / "db")
    result = runner.invoke(app, ["map", "--db", str(db), "--sample", "12"])
    assert result.exit_code == 0, result.output
    assert "Laid out 30 images by their faramir embedding: UMAP fitted on 12, the other 18 placed" in result.output
    again = runner.invoke(app, ["map", "--db", str(db)])
    assert "Placed 0 new images on the faramir map (30 in all)" in again.output
    bad = runner.invoke(app, ["map", "--db", str(db), "--sample", "1"])
    assert bad.exit_code != 0 and "--sample" in bad.output


def _layout(db) -> dict[str, tuple[float, float]]:
    from faramir.store.cache import Cache

    rows = Cache.open(db).read("layout")
    return {i: (x, y) for i, x, y in zip(rows.column("id").to_pylist(), rows.column("x").to_pylist(),
                                                    rows.column("y").to_pylist())}


def _id(path: Path) -> str:
    from faramir.files import sha256_file

    return sha256_file(path)


def test_without_umap_faramir_map_says_in_one_line_how_to_install_it(cache, tmp_path, monkeypatch):
    import sys

    from faramir.cli.app import app

    _, db = cache
    db = shutil.copytree(db, tmp_path / "db")
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    result = runner.invoke(app, ["map", "--db", str(db)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        "Error: faramir map needs umap-learn (the 'map' extra): pip install 'faramir[map]'"
