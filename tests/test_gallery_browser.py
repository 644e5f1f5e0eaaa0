"""The gallery end to end in real headless Chromium (Debian's, driven by Playwright), served by
uvicorn on a free loopback port over a cache ingested from generated images with tiny weights.
Each test saves a screenshot (in its tmp dir) and checks it is not blank."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.conftest import cli, read_only
from tests.gallery_helpers import (  # noqa: F401 (browser, page: fixtures)
    CHROMIUM,
    browser,
    ingested_cache,
    page,
    running,
    spread_head,
    wait_until,
)

pytest.importorskip("fastapi", reason="the gallery needs the 'serve' extra: pip install 'faramir[serve]'")
pytest.importorskip("playwright", reason="browser tests need playwright: pip install 'faramir[dev]'")
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does), or set FARAMIR_CHROMIUM",
)

HEAD = "spread"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("gallery-browser")
    db = ingested_cache(root, tiny_weights, n=30)
    spread_head(db, tiny_weights, HEAD)
    return db


@pytest.fixture(scope="module")
def server(cache, tmp_path_factory, tiny_weights):
    from faramir.gallery.app import create_app

    app = create_app(cache, work=tmp_path_factory.mktemp("work"), weights_dir=tiny_weights)
    with running(app) as url:
        yield url


def tile_ids(pg) -> list[str]:
    return pg.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.id)")


def counts(pg) -> tuple[int, int]:
    return (int(pg.get_attribute("#count-accepted", "data-n")), int(pg.get_attribute("#count-rejected", "data-n")))


def test_tiles_appear_in_the_order_faramir_top_gives(server, cache, page):
    page.goto(f"{server}/?head={HEAD}&t=0.4")
    wait_until(page, "() => document.querySelectorAll('#grid .tile').length >= 30")
    want = [json.loads(line)["id"] for line in cli("top", "--db", cache, "--head", HEAD, "--threshold", "0.4",
                                                   "--limit", "0", "--format", "jsonl").splitlines()]
    assert tile_ids(page) == want
    marks = page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.accepted === 'true')")
    assert marks == [json.loads(line)["accepted"] for line in cli(
        "top", "--db", cache, "--head", HEAD, "--threshold", "0.4", "--limit", "0", "--format", "jsonl").splitlines()]
    wait_until(page, "() => [...document.querySelectorAll('#grid .tile img')].every(i => i.complete && i.naturalWidth > 0)")
    page.select_option("#sort", "aesthetic:asc")
    wait_until(page, "() => new URLSearchParams(location.search).get('sort') === 'aesthetic'")
    wait_until(page, "() => document.querySelectorAll('#grid .tile').length >= 30")
    want = [json.loads(line)["id"] for line in cli("top", "--db", cache, "--head", HEAD, "--threshold", "0.4",
                                                   "--sort", "aesthetic", "--ascending", "--limit", "0",
                                                   "--format", "jsonl").splitlines()]
    assert tile_ids(page) == want
    page.go_back()  # the URL holds the state: back restores the confidence order
    wait_until(page, "() => document.querySelector('#sort').value === 'confidence:desc'")


def test_moving_the_slider_changes_the_counts_to_what_faramir_stats_says(server, cache, page):
    page.goto(f"{server}/?head={HEAD}")
    page.wait_for_selector("#grid .tile")
    for t in ("0.25", "0.5", "0.8"):
        page.eval_on_selector("#threshold", "(el, t) => { el.value = t; el.dispatchEvent(new Event('input', {bubbles: true})); }", t)
        stats = json.loads(cli("stats", "--db", cache, "--head", HEAD, "--threshold", t, "--json"))
        wait_until(
            page, "([a, r]) => document.querySelector('#count-accepted').dataset.n === String(a) && "
            "document.querySelector('#count-rejected').dataset.n === String(r)",
            arg=[stats["accepted"], stats["rejected"]])
        assert counts(page) == (stats["accepted"], stats["rejected"])
        assert page.inner_text("#threshold-value") == f"{float(t):.2f}"
        wait_until(page, "t => (new URLSearchParams(location.search).get('t') || '0.5') === t", t)
    wait_until(page, "() => document.querySelectorAll('#grid .tile').length > 0")
    shown = page.eval_on_selector_all("#grid .tile", "els => els.filter(e => e.dataset.accepted === 'true').length")
    assert shown == json.loads(cli("stats", "--db", cache, "--head", HEAD, "--threshold", "0.8", "--json"))["accepted"]


def test_pressing_a_on_a_focused_tile_creates_the_label(server, cache, page):
    page.goto(f"{server}/?head={HEAD}&t=0.5")
    page.wait_for_selector("#grid .tile")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    focused = page.get_attribute("#grid .tile.focus", "data-id")
    assert focused == tile_ids(page)[2]
    before = int(page.get_attribute("#label-total", "data-n"))
    page.keyboard.press("a")
    wait_until(page, "id => document.querySelector(`.tile[data-id='${id}']`).dataset.curated === 'accept'",
                           arg=focused)
    wait_until(page, "n => document.querySelector('#label-total').dataset.n === String(n)", before + 1)
    listed = {json.loads(line)["id"]: json.loads(line) for line in
              cli("labels", "list", "--db", cache, "--format", "jsonl").splitlines()}
    assert listed[focused]["label"] == "accept" and listed[focused]["source"] == "gallery"
    # shift+arrows select a range; r labels all of it; u removes
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    chosen = page.eval_on_selector_all("#grid .tile.selected", "els => els.map(e => e.dataset.id)")
    assert len(chosen) == 3
    page.keyboard.press("r")
    wait_until(page, "ids => ids.every(id => document.querySelector(`.tile[data-id='${id}']`).dataset.curated === 'reject')",
                           arg=chosen)
    page.keyboard.press("u")
    wait_until(page, "ids => ids.every(id => document.querySelector(`.tile[data-id='${id}']`).dataset.curated === '')",
                           arg=chosen)
    assert not (set(chosen) & {json.loads(line)["id"] for line in
                               cli("labels", "list", "--db", cache, "--format", "jsonl").splitlines()})


def test_the_detail_view_shows_31_bars_and_similar_accepted_shows_only_accepted_images(server, cache, page):
    page.goto(f"{server}/?head={HEAD}&t=0.5")
    page.wait_for_selector("#grid .tile")
    first = tile_ids(page)[0]
    page.keyboard.press("Enter")
    page.wait_for_selector("#logits .logit-row")
    assert page.eval_on_selector_all("#logits .logit-row", "els => els.length") == 31
    assert page.eval_on_selector_all("#heads-table tr", "els => els.length") == 1 + 2  # header + two heads
    assert first in page.get_attribute("#detail-title", "title")
    wait_until(page, "() => document.querySelector('#detail-img').naturalWidth > 0")
    page.click("#similar-accepted")
    wait_until(page, "() => new URLSearchParams(location.search).get('view') === 'similar'")
    wait_until(page, "() => document.querySelectorAll('#grid .tile').length > 0 && !document.querySelector('#banner').hidden")
    wait_until(page, "() => document.querySelector('#status').textContent.includes('end')")
    ids = tile_ids(page)
    accepted = {json.loads(line)["id"] for line in cli("top", "--db", cache, "--head", HEAD, "--threshold", "0.5",
                                                       "--accepted", "--limit", "0", "--format", "jsonl").splitlines()}
    assert ids and set(ids) <= accepted
    assert page.eval_on_selector_all("#grid .tile", "els => els.every(e => e.dataset.accepted === 'true')")
    assert len(ids) == min(48, len(accepted))
    page.keyboard.press("Escape")  # closes the detail
    page.keyboard.press("Escape")  # back to the grid
    wait_until(page, "() => new URLSearchParams(location.search).get('view') === null")


def test_compare_two_heads_and_export_links(server, cache, page):
    from faramir.store.heads.compare import disagreements

    page.goto(f"{server}/?head={HEAD}&t=0.49")
    page.wait_for_selector("#grid .tile")
    page.select_option("#compare", "faramir-v1")
    wait_until(page, "() => new URLSearchParams(location.search).get('view') === 'compare'")
    want = disagreements(HEAD, "faramir-v1", cache, threshold=0.49, limit=60)
    wait_until(page, "n => document.querySelectorAll('#grid .tile').length === n", len(want.rows))
    assert tile_ids(page) == want.rows.column("id").to_pylist()
    href = page.get_attribute("#export-csv", "href")
    assert href.startswith("/api/export?") and "format=csv" in href and f"head={HEAD}" in href
    with page.expect_download() as download:
        page.click("#export-jsonl")
    lines = open(download.value.path()).read().splitlines()
    assert len(lines) == json.loads(cli("stats", "--db", cache, "--head", HEAD, "--threshold", "0.49", "--json"))["total"]


def test_typing_a_query_and_enter_shows_what_store_search_finds(server, cache, page, tiny_weights):
    pytest.importorskip("open_clip", reason="search by text needs the text extra: pip install 'faramir[text]'")
    from faramir.store.filters import Filter
    from faramir.store.vectors.text import search
    from faramir.text_weights import load_text_encoder

    text = "a dragon over water"
    page.goto(f"{server}/?head={HEAD}&t=0.5&show=accepted")
    page.wait_for_selector("#grid .tile")
    grid = tile_ids(page)
    assert not page.is_disabled("#q")
    page.click("#q")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    wait_until(page, "q => new URLSearchParams(location.search).get('q') === q", text)
    wait_until(page, "() => document.querySelector('#status').textContent.includes('end')")
    want = search(text, cache, k=48, encoder=load_text_encoder(tiny_weights),
                  filter=Filter(head=HEAD, threshold=0.5, accepted=True)).to_pylist()
    assert want and tile_ids(page) == [r["id"] for r in want]
    shown = page.eval_on_selector_all("#grid .tile .extra", "els => els.map(e => e.textContent)")
    assert shown == [f"sim {r['similarity']:.3f}" for r in want]
    assert text in page.text_content("#banner-text")
    page.go_back()  # the grid it came from
    wait_until(page, "() => new URLSearchParams(location.search).get('view') === null")
    wait_until(page, "n => document.querySelectorAll('#grid .tile').length === n", len(grid))
    assert tile_ids(page) == grid and page.input_value("#q") == ""
    page.go_forward()  # the URL holds the query
    wait_until(page, "q => document.querySelector('#q').value === q", text)
    wait_until(page, "() => document.querySelector('#status').textContent.includes('end')")
    assert tile_ids(page) == [r["id"] for r in want]


def test_without_a_text_tower_the_search_box_is_disabled_and_says_how_to_get_one(cache, page, tmp_path):
    from faramir.gallery.app import create_app

    with running(create_app(cache, work=tmp_path / "work", weights_dir=tmp_path / "none")) as url:
        page.goto(f"{url}/?head={HEAD}")
        page.wait_for_selector("#grid .tile")
        assert page.is_disabled("#q")
        assert "faramir weights download --text" in page.get_attribute("#search-box", "title")


def test_a_finetune_under_a_heads_name_asks_first_and_replaces_only_when_told(server, cache, page):
    page.goto(f"{server}/?head={HEAD}")
    page.wait_for_selector("#grid .tile")
    page.click("#finetune-btn")
    page.fill("#ft-name", "faramir-v1")  # a registered head's name (the base is the view's, spread)
    page.fill("#ft-epochs", "1")
    page.click("#ft-start")
    page.wait_for_selector("#ft-taken:not([hidden])")
    assert "a head named 'faramir-v1' exists" in page.inner_text("#ft-taken-text")
    assert page.inner_text("#ft-replace") == "Replace faramir-v1" and page.is_hidden("#ft-progress")
    page.fill("#ft-name", f"{HEAD}-2")  # another name: the question goes
    assert page.is_hidden("#ft-taken")


def test_a_cache_that_cannot_be_written_says_why_and_offers_no_writes(cache, page, tmp_path):
    from faramir.gallery.app import create_app

    with read_only(cache) as db, running(create_app(db, work=tmp_path / "work")) as url:
        page.goto(f"{url}/?head={HEAD}")
        page.wait_for_selector("#grid .tile")
        page.wait_for_selector("#cannot-write:not([hidden])")
        assert page.inner_text("#cannot-write").startswith(f"Labels and finetunes are off: {db}: the cache cannot be "
                                                           f"written here")
        assert page.is_hidden("#finetune-btn")
        page.keyboard.press("a")  # a label asked for anyway: the page says why it is not written
        page.wait_for_selector("#toast.show")
        assert "cannot be written" in page.inner_text("#toast")


def test_newest_first_shows_a_newly_ingested_image_first(page, tmp_path, tiny_weights):
    from faramir.gallery.app import create_app
    from faramir.store.ingestion import ingest_all
    from tests.conftest import write_images

    db = ingested_cache(tmp_path / "growing", tiny_weights, n=8)
    with running(create_app(db, work=tmp_path / "work")) as url:
        page.goto(f"{url}/")
        wait_until(page, "() => document.querySelectorAll('#grid .tile').length === 8")
        page.select_option("#sort", "newest:desc")
        wait_until(page, "() => new URLSearchParams(location.search).get('sort') === 'newest'")
        [new] = write_images(tmp_path / "arrived", 1, seed=77, prefix="arrival")
        ingest_all([new], db=db, weights_dir=tiny_weights, device="cpu", workers=0)
        page.reload()  # the view (newest first) is in the URL
        wait_until(page, "() => document.querySelectorAll('#grid .tile').length === 9")
        want = [json.loads(line)["id"] for line in cli("top", "--db", db, "--sort", "newest", "--limit", "0",
                                                       "--format", "jsonl").splitlines()]
        assert tile_ids(page) == want and want[0] == hashlib.sha256(new.read_bytes()).hexdigest()
        assert page.input_value("#sort") == "newest:desc"
