"""Near-duplicate groups: equal to the connected components of exactly computed pairs, through the
projected, partitioned candidate search too; keepers; real images (a resized JPEG copy is grouped
with its original, unrelated images are not, exact copies are one content); the CLI and
`export --dedupe`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.store.errors import QueryError
from faramir.store.exports import export
from faramir.store.filters import Filter
from faramir.store.heads import registry
from faramir.store.near_duplicates import close_pairs as close_pairs
from faramir.store.near_duplicates.groups import duplicates
from faramir.store.queries.counting import count
from tests.stage2_helpers import tiny_cache

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("synth") / "db", n=2000)


def exact_groups(cache, threshold, embedding="siglip", **filters) -> set[frozenset[str]]:
    """Connected components (≥ 2 rows) of all pairs at cosine ≥ threshold, by brute force."""
    cols = registry.columns(cache, "faramir-v1")
    prefix = cols.prefix
    t = cache.images().to_arrow()
    f = Filter.of(**filters)
    keep = f.keep(t[f"{prefix}_confidence"].to_numpy(), t[f"{prefix}_accept_label"].to_pylist(),
                  t[f"{prefix}_reject_label"].to_pylist(), t["aesthetic_score"].to_numpy())
    x = t[f"{embedding}_embedding"].combine_chunks().values.to_numpy().reshape(len(t), -1)[keep]
    x = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.array(t["id"].to_pylist())[keep]
    s = x @ x.T
    np.fill_diagonal(s, -1.0)
    label = np.arange(len(ids))
    for i, j in zip(*np.nonzero(s >= threshold)):  # tiny: label propagation by hand
        a, b = label[i], label[j]
        label[label == max(a, b)] = min(a, b)
    groups: dict[int, set[str]] = {}
    for image_id, g in zip(ids, label):
        groups.setdefault(int(g), set()).add(str(image_id))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def found_groups(result) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for row in result.table.to_pylist():
        groups.setdefault(row["group"], set()).add(row["id"])
    return {frozenset(g) for g in groups.values()}


@pytest.mark.parametrize("threshold,embedding,filters", [
    (0.9, "siglip", {}),
    (0.88, "siglip", {"accepted": True}),
    (0.85, "faramir", {"min_confidence": 0.3}),
])
def test_groups_are_the_components_of_exact_pairs(synth, threshold, embedding, filters):
    result = duplicates(synth, threshold=threshold, embedding=embedding, **filters)
    want = exact_groups(synth, threshold, embedding, **filters)
    assert len(want) > 10  # the test means something
    assert found_groups(result) == want
    assert result.groups == len(want) and result.rows == count(synth, **filters)


def test_projected_partitioned_search_finds_every_pair(synth, monkeypatch):
    # 8 of 32 dimensions and about 31 cells of 64 rows: the candidate search of large tables,
    # lossless while no row has more cells in reach than it may probe.
    monkeypatch.setattr(close_pairs, "PROJECTED_DIM", 8)
    monkeypatch.setattr(close_pairs, "ROWS_PER_CELL", 64)
    monkeypatch.setattr(close_pairs, "MAX_PROBES", 40)
    result = duplicates(synth, threshold=0.9)
    assert result.cut == 0
    assert found_groups(result) == exact_groups(synth, 0.9)
    assert result.candidates > result.edges  # projected distances only bound the true ones


def test_few_probes_still_find_near_duplicates(synth, monkeypatch):
    monkeypatch.setattr(close_pairs, "PROJECTED_DIM", 8)
    monkeypatch.setattr(close_pairs, "ROWS_PER_CELL", 64)
    result = duplicates(synth, threshold=0.9)  # MAX_PROBES as shipped
    want = exact_groups(synth, 0.9)
    found = found_groups(result)
    pairs = lambda groups: {frozenset((a, b)) for g in groups for a in g for b in g if a < b}  # noqa: E731
    assert pairs(found) <= pairs(want)  # never a wrong pair
    assert len(pairs(found)) >= 0.95 * len(pairs(want))


@pytest.mark.parametrize("keep", ["confidence", "aesthetic", "largest"])
def test_keeper_is_the_best_member_and_similarity_is_to_it(synth, keep):
    rows = duplicates(synth, threshold=0.9, keep=keep).table.to_pylist()
    vectors = {r["id"]: np.asarray(r["siglip_embedding"], np.float64)
               for r in synth.images().to_arrow().select(["id", "siglip_embedding"]).to_pylist()}
    by_group: dict[int, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    key = {"confidence": lambda r: (r["decision"],), "aesthetic": lambda r: (r["aesthetic_score"], r["decision"]),
           "largest": lambda r: (r["width"] * r["height"], r["size"], r["decision"])}[keep]
    for members in by_group.values():
        keeper = members[0]
        assert keeper["keeper"] and not any(m["keeper"] for m in members[1:])
        assert key(keeper) == max(key(m) for m in members)
        assert keeper["similarity"] == 1.0
        k = vectors[keeper["id"]] / np.linalg.norm(vectors[keeper["id"]])
        for m in members[1:]:
            v = vectors[m["id"]] / np.linalg.norm(vectors[m["id"]])
            assert m["similarity"] == pytest.approx(float(k @ v), abs=1e-9)
        sims = [m["similarity"] for m in members[1:]]
        assert sims == sorted(sims, reverse=True)
    groups = [r["group"] for r in rows]
    assert groups == sorted(groups) and groups[0] == 1


def test_no_group_is_an_empty_table_with_the_columns(synth):
    result = duplicates(synth, threshold=1.0, min_confidence=0.5)  # no two synthetic rows are equal
    assert result.groups == 0 and len(result.table) == 0
    assert result.table.column_names[:4] == ["group", "keeper", "similarity", "id"]


def test_bad_arguments(synth):
    with pytest.raises(QueryError, match="threshold 1.5"):
        duplicates(synth, threshold=1.5)
    with pytest.raises(QueryError, match="keep 'newest'"):
        duplicates(synth, keep="newest")
    with pytest.raises(QueryError, match="embedding 'clip'"):
        duplicates(synth, embedding="clip")


# -- real images through the tiny model -----------------------------------------------------------


def art(seed: int, size=(640, 480)) -> Image.Image:
    """An image of smooth coloured waves and a little noise (larger than 384: the trunk sees it
    downscaled, as it would a real photo)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    pixels = np.zeros((h, w, 3))
    for c in range(3):
        f, phase = rng.uniform(2, 12, 2), rng.uniform(0, 6.3, 2)
        pixels[..., c] = 127 + 100 * np.sin(f[0] * 6.28 * xx + phase[0]) * np.cos(f[1] * 6.28 * yy + phase[1])
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_weights):
    from faramir.store.ingestion import ingest_all

    root = tmp_path_factory.mktemp("photos")
    imgs = root / "imgs"
    imgs.mkdir()
    art(1).save(imgs / "a.png")
    art(1).resize((500, 375), Image.LANCZOS).save(imgs / "a_small.jpg", quality=85)  # resized, re-encoded
    art(2).save(imgs / "b.png")
    art(3).save(imgs / "c.png")
    art(4).save(imgs / "d.png")
    shutil.copy(imgs / "d.png", imgs / "d_copy.png")  # the same content at a second path
    ingest_all([imgs], db=root / "db", weights_dir=tiny_weights, workers=0, device="cpu")
    return root


# The tiny generated model maps every image near every other (unrelated images land at cosine
# 0.95-0.985: random weights), so these tests separate at 0.999; the resized JPEG copy is at 0.9999.
TINY_THRESHOLD = 0.999


def names(row) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in row["paths"])


def test_resized_jpeg_copy_is_grouped_unrelated_images_are_not(photos):
    rows = duplicates(photos / "db", threshold=TINY_THRESHOLD).table.to_pylist()
    groups: dict[int, list[list[str]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(names(row))
    assert sorted(sorted(g) for g in groups.values()) == [[["a.png"], ["a_small.jpg"]], [["d.png", "d_copy.png"]]]
    near = [r for r in rows if r["group"] == rows[0]["group"]]
    assert near[1]["similarity"] > 0.999


def test_exact_copies_are_one_content(photos):
    rows = duplicates(photos / "db", threshold=1.0).table.to_pylist()  # no near-duplicate this close
    assert [names(r) for r in rows] == [["d.png", "d_copy.png"]]
    assert rows[0]["keeper"] and rows[0]["similarity"] == 1.0


def test_cli_duplicates_and_export_dedupe(photos, tmp_path):
    db = str(photos / "db")
    result = runner.invoke(app, ["duplicates", "--db", db, "--threshold", str(TINY_THRESHOLD), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["copies"] for r in rows) == [1, 1, 2] and sum(r["keeper"] for r in rows) == 2
    assert "2 groups, 3 images (1 further paths of the same content) among 5 searched" in result.stderr
    table = runner.invoke(app, ["duplicates", "--db", db, "--threshold", str(TINY_THRESHOLD)])
    assert table.exit_code == 0 and "keep" in table.stdout

    every = export(tmp_path / "all.jsonl", db)
    once = export(tmp_path / "deduped.jsonl", db, dedupe=True, dedupe_threshold=TINY_THRESHOLD)
    assert (every.rows, once.rows) == (5, 4)
    kept = [json.loads(line)["path"].rsplit("/", 1)[-1] for line in (tmp_path / "deduped.jsonl").open()]
    assert len({"a.png", "a_small.jpg"} & set(kept)) == 1
    result = runner.invoke(app, ["export", str(tmp_path / "files"), "--db", db, "--dedupe",
                                 "--dedupe-threshold", str(TINY_THRESHOLD), "--limit", "10"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "files").iterdir())) == 4
