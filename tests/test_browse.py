"""Browsing queries (faramir.store.queries, heads.compare) and the label writes by id: keyset pages equal `top`, counts equal `stats`, one
image's detail, two heads' disagreements, labels set and unset by content id."""

from __future__ import annotations

import numpy as np
import pytest

from faramir.config import LABELS
from faramir.store.errors import LabelsError, QueryError
from faramir.store.heads import compare
from faramir.store.labels.table import LabelCounts, label_counts, labels_of, list_labels, set_labels, unset_labels
from faramir.store.queries import counting, images, ranking
from faramir.store.queries.counting import stats
from faramir.store.queries.ranking import top
from tests.stage2_helpers import ACCEPT, REJECT, hand_cache, head_file, tiny_cache


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    cache = tiny_cache(root / "db", n=600)
    from faramir.store.heads.rescore import rescore

    rescore(head_file(root / "other.pth", seed=5), "other", db=cache)
    return cache


@pytest.fixture(scope="module")
def ties(tmp_path_factory):
    """Few distinct confidences and aesthetic scores: most rows tie on every sort key but id."""
    rng = np.random.default_rng(9)
    n = 90
    conf = rng.choice(np.array([0.2, 0.5, 0.7, 0.9, 1.0], np.float32), n)
    aesthetic = rng.choice(np.array([3.0, 6.5], np.float32), n)
    return hand_cache(tmp_path_factory.mktemp("ties") / "db", conf, rng.choice(ACCEPT, n), rng.choice(REJECT, n),
                      aesthetic)


def all_pages(cache, limit, **kwargs):
    rows, after, pages = [], None, 0
    while True:
        p = ranking.page(cache, after=after, limit=limit, **kwargs)
        rows += p.rows.to_pylist()
        pages += 1
        assert len(p.rows) <= limit
        if p.next is None:
            return rows, pages
        assert len(p.rows) == limit
        after = p.next


@pytest.mark.parametrize("sort", ["confidence", "aesthetic", "newest"])
@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("filters", [{}, {"accepted": True, "threshold": 0.6},
                                     {"labels": ("2d_fantasy", "text", "ui"), "threshold": 0.3},
                                     {"min_aesthetic": 4.5, "max_aesthetic": 7.0, "accepted": False}])
def test_pages_joined_equal_top(synthetic, sort, descending, filters):
    want = top(synthetic, sort=sort, descending=descending, limit=None, **filters).to_pylist()
    got, pages = all_pages(synthetic, 37, sort=sort, descending=descending, **filters)
    assert got == want
    assert pages == max(1, -(-len(want) // 37))  # no empty last page


@pytest.mark.parametrize("sort", ["confidence", "aesthetic"])
@pytest.mark.parametrize("descending", [True, False])
def test_pages_are_exact_through_ties(ties, sort, descending):
    want = top(ties, sort=sort, descending=descending, limit=None).to_pylist()
    for limit in (1, 7, 30):
        got, _ = all_pages(ties, limit, sort=sort, descending=descending)
        assert [r["id"] for r in got] == [r["id"] for r in want]


@pytest.fixture(scope="module")
def arrivals(tmp_path_factory):
    """60 rows that arrived at four moments (many tied to the microsecond, as one ingest's commit)."""
    from datetime import datetime, timedelta, timezone

    rng = np.random.default_rng(4)
    n = 60
    cache = hand_cache(tmp_path_factory.mktemp("arrivals") / "db", rng.random(n).astype(np.float32),
                       rng.choice(ACCEPT, n), rng.choice(REJECT, n))
    start = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    table = cache.images()
    for n, image_id in enumerate(table.to_arrow().column("id").to_pylist()):
        at = start + timedelta(seconds=int(rng.integers(0, 4)), microseconds=int(rng.integers(0, 2)))
        table.update(where=f"id = '{image_id}'", values={"ingested_at": at})
    return cache


@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("filters", [{}, {"accepted": True, "threshold": 0.4}])
def test_newest_first_pages_equal_top_and_follow_the_ingest_time(arrivals, descending, filters):
    want = top(arrivals, sort="newest", descending=descending, limit=None, **filters).to_pylist()
    times = {r["id"]: r["ingested_at"] for r in arrivals.read("images", ["id", "ingested_at"]).to_pylist()}
    keys = [(times[r["id"]], r["id"]) for r in want]
    assert keys == sorted(keys, key=lambda k: (-k[0].timestamp() if descending else k[0].timestamp(), k[1]))
    assert len({t for t, _ in keys}) > 4  # ties within a second, and to the microsecond
    for limit in (1, 7, 25):
        got, _ = all_pages(arrivals, limit, sort="newest", descending=descending, **filters)
        assert [r["id"] for r in got] == [r["id"] for r in want]
    with pytest.raises(QueryError, match="is not one this sort gives"):
        ranking.page(arrivals, sort="newest", after="0.5e3," + "a" * 64)


def test_a_bad_cursor_or_sort_is_refused_in_one_line(synthetic):
    for cursor in ("junk", "0.5,notanid", "nan," + "a" * 64, "0.5,0.5," + "a" * 64, "0.5;DROP," + "a" * 64):
        with pytest.raises(QueryError, match="is not one this sort gives"):
            ranking.page(synthetic, after=cursor)
    with pytest.raises(QueryError, match="sort 'path'"):
        ranking.page(synthetic, sort="path")
    with pytest.raises(QueryError, match="limit 0"):
        ranking.page(synthetic, limit=0)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.83])
@pytest.mark.parametrize("filters", [{}, {"labels": ("2d_fantasy", "degraded")}, {"labels": ("2d_human",)},
                                     {"min_aesthetic": 5.0}])
def test_counts_equal_stats(synthetic, t, filters):
    s = stats(synthetic, threshold=t, **filters)
    got = counting.counts(synthetic, threshold=t, accepted=True, **filters)  # the side shown is ignored
    assert got == counting.Counts(accepted=s.accepted, rejected=s.rejected, total=s.total)


def test_detail_has_31_logits_under_every_head(synthetic):
    row = top(synthetic, limit=1, threshold=0.4).to_pylist()[0]
    d = images.detail(row["id"], synthetic, threshold=0.4)
    assert d.paths == row["paths"] and d.aesthetic_score == row["aesthetic_score"]
    assert [s["head"] for s in d.scores] == ["faramir-v1", "other"]
    v1 = d.scores[0]
    assert len(v1["logits"]) == 31 and len(d.logit_names) == 31 and d.logit_names[-1] == "accept"
    assert v1["confidence"] == row["confidence"] and v1["accepted"] == row["accepted"]
    assert v1["label"] == row["label"] and v1["logits"][30] == row["decision"]
    side = slice(0, 9) if v1["accepted"] else slice(9, 30)
    assert LABELS[side][int(np.argmax(v1["logits"][side]))] == v1["label"]
    other = top(synthetic, head="other", limit=None, threshold=0.4).to_pylist()
    assert d.scores[1]["confidence"] == next(r["confidence"] for r in other if r["id"] == row["id"])
    assert images.sources(row["id"], synthetic) == (row["paths"], d.size)
    with pytest.raises(QueryError, match="no cached image has this id"):
        images.detail("0" * 64, synthetic)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, "/synthetic/0001/00000001.png"):
        with pytest.raises(QueryError, match="is not a content id"):
            images.detail(bad, synthetic)


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
def test_disagreements_sorted_by_gap(synthetic, t):
    a = {r["id"]: r for r in top(synthetic, limit=None, threshold=t).to_pylist()}
    b = {r["id"]: r for r in top(synthetic, head="other", limit=None, threshold=t).to_pylist()}
    want = {i for i in a if a[i]["accepted"] != b[i]["accepted"]}
    result = compare.disagreements("faramir-v1", "other", synthetic, threshold=t, limit=10_000)
    got = result.rows.to_pylist()
    assert result.total == len(want) == len(got) and {r["id"] for r in got} == want
    gaps = [r["gap"] for r in got]
    assert gaps == sorted(gaps, reverse=True)
    for r in got:
        assert r["accepted_a"] == a[r["id"]]["accepted"] and r["label_b"] == b[r["id"]]["label"]
        assert r["gap"] == pytest.approx(abs(a[r["id"]]["confidence"] - b[r["id"]]["confidence"]))
    window = compare.disagreements("faramir-v1", "other", synthetic, threshold=t, offset=3, limit=5).rows
    assert window.column("id").to_pylist() == [r["id"] for r in got[3:8]]
    with pytest.raises(QueryError, match="two different heads"):
        compare.disagreements("other", "other", synthetic)


def test_labels_set_and_unset_by_id(tmp_path):
    cache = tiny_cache(tmp_path / "db", n=50)
    ids = [r["id"] for r in top(cache, limit=5).to_pylist()]
    assert set_labels(ids[:3], "accept", cache) == 3
    assert set_labels([ids[2], ids[3], ids[3]], "Degrated", cache) == 2  # canonical name, deduplicated
    assert labels_of(ids, cache) == {ids[0]: "accept", ids[1]: "accept", ids[2]: "degraded", ids[3]: "degraded"}
    listed = {r["id"]: r for r in list_labels(cache).to_pylist()}
    assert listed[ids[2]]["label"] == "degraded" and listed[ids[2]]["source"] == "gallery"
    assert label_counts(cache) == LabelCounts(total=4, accept=2, reject=2)
    assert unset_labels([ids[0], ids[4]], cache) == 1
    assert label_counts(cache).total == 3
    with pytest.raises(LabelsError, match="no cached image has this id"):
        set_labels(["f" * 64], "accept", cache)
    with pytest.raises(LabelsError, match="is not a content id"):
        set_labels(["../x"], "accept", cache)
    with pytest.raises(LabelsError, match="not_a_label"):
        set_labels(ids[:1], "not_a_label", cache)
    assert label_counts(cache).total == 3  # nothing written by a refused call


def test_many_label_writes_stay_compact(tmp_path, monkeypatch):
    from faramir.store.labels import table as labels

    monkeypatch.setattr(labels, "LABEL_FRAGMENTS", 4)
    cache = tiny_cache(tmp_path / "db", n=20)
    ids = [r["id"] for r in top(cache, limit=None).to_pylist()]
    for n, image_id in enumerate(ids):
        set_labels([image_id], "accept" if n % 2 else "reject", cache)
    assert len(cache.dataset("labels").get_fragments()) <= 5
    assert label_counts(cache) == LabelCounts(total=20, accept=10, reject=10)
