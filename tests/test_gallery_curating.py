"""The curator's loop in the gallery, in Debian's Chromium: the Map view (points read back from the
canvas; a lasso drawn with the mouse labels the images it covers), the Label next view's keys,
and the diff step after a finetune. Screenshots are saved in each test's tmp dir."""

from __future__ import annotations

import json
import os

import pytest

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
pytest.importorskip("umap", reason="the map needs the 'map' extra: pip install 'faramir[map]'")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")

HEAD = "spread"
ACC, REJ = (46, 160, 67), (214, 56, 56)  # map.js's colours of a decision


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_weights):
    from faramir.store.map.layout import map_layout

    root = tmp_path_factory.mktemp("gallery-curating")
    db = ingested_cache(root, tiny_weights, n=40)
    spread_head(db, tiny_weights, HEAD)
    map_layout(db, sample=30, seed=0)
    return db


@pytest.fixture
def server(cache, tmp_path):
    from faramir.gallery.app import create_app

    with running(create_app(cache, work=tmp_path / "work")) as url:
        yield url


PIXELS = """() => {
  const m = window.faramirMapView, c = document.getElementById('map-canvas');
  const copy = document.createElement('canvas');
  copy.width = c.width; copy.height = c.height;
  const g = copy.getContext('2d');
  g.drawImage(c, 0, 0);
  const dpr = c.width / c.getBoundingClientRect().width;
  const out = [];
  for (let i = 0; i < m.info.count; i++) {
    const [x, y] = m.project(i);
    out.push([x, y, Array.from(g.getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data.slice(0, 3))]);
  }
  return out;
}"""


def map_ids(db) -> list[str]:
    from faramir.store.cache import Cache
    from faramir.store.map.points import points

    return points(Cache.open(db)).ids.to_pylist()


def decisions(db, t: float) -> dict[str, bool]:
    from faramir.store.queries.ranking import top

    return {r["id"]: r["accepted"] for r in top(db, head=HEAD, threshold=t, limit=None).to_pylist()}


def apart(pixels, gap: float = 14.0) -> list[int]:
    """The points with no other point within `gap` CSS pixels: their pixel is theirs alone."""
    return [i for i, (x, y, _) in enumerate(pixels)
            if all((x - u) ** 2 + (y - v) ** 2 > gap ** 2 for j, (u, v, _) in enumerate(pixels) if j != i)]


def test_the_map_draws_every_image_coloured_by_its_decision_and_recolours_with_the_threshold(server, cache, page):
    page.goto(f"{server}/?head={HEAD}&t=0.5")
    page.wait_for_selector("#grid .tile")
    page.keyboard.press("m")
    wait_until(page, "() => window.faramirMapView && window.faramirMapView.ready")
    assert page.evaluate("() => window.faramirMapView.info.count") == 40
    ids = map_ids(cache)
    for t in (0.5, 0.3):
        if t != 0.5:
            page.eval_on_selector("#threshold", "(el, t) => { el.value = t; el.dispatchEvent(new Event('input', {bubbles: true})); }", str(t))
            wait_until(page, "t => (new URLSearchParams(location.search).get('t') || '0.5') === t", str(t))
            page.wait_for_timeout(300)
        pixels = page.evaluate(PIXELS)
        want = decisions(cache, t)
        alone = apart(pixels)
        assert len(alone) >= 10, "too few points stand apart to read their colours back"
        for i in alone:
            assert tuple(pixels[i][2]) == (ACC if want[ids[i]] else REJ), (i, t)
    # hovering a point shows its thumbnail
    box = page.locator("#map-overlay").bounding_box()
    x, y, _ = pixels[alone[0]]
    page.mouse.move(box["x"] + x, box["y"] + y)
    wait_until(page, "id => !document.querySelector('#map-tip').hidden && document.querySelector('#map-tip').dataset.id === id",
               ids[alone[0]])
    wait_until(page, "() => document.querySelector('#map-tip img').naturalWidth > 0")
    assert page.get_attribute("#map-tip img", "src") == f"/api/thumb/{ids[alone[0]]}"
    # another colouring: the curator label (none yet: every point the same faint grey)
    page.select_option("#map-by", "label")
    wait_until(page, "() => new URLSearchParams(location.search).get('by') === 'label'")
    page.wait_for_timeout(300)
    colours = {tuple(p[2]) for i, p in enumerate(page.evaluate(PIXELS)) if i in alone}
    assert colours == {(200, 200, 208)}


def test_a_lasso_labels_exactly_the_images_it_covers_and_opens_them_in_the_grid(server, cache, page, tmp_path):
    from faramir.store.labels.table import list_labels, remove_labels

    remove_labels(all=True, db=cache)
    page.goto(f"{server}/?head={HEAD}&view=map")
    wait_until(page, "() => window.faramirMapView && window.faramirMapView.ready")
    pixels = page.evaluate(PIXELS)
    box = page.locator("#map-overlay").bounding_box()
    xs = sorted(x for x, _, _ in pixels)
    cut = max(range(len(xs) - 1), key=lambda k: (xs[k + 1] - xs[k]) * (5 < k < len(xs) - 5))  # the widest gap
    right = (xs[cut] + xs[cut + 1]) / 2  # a lasso from the left edge to the middle of that gap
    top, bottom = min(y for _, y, _ in pixels) - 20, max(y for _, y, _ in pixels) + 20
    corners = [(5, top), (right, top), (right, bottom), (5, bottom)]
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + corners[0][0], box["y"] + corners[0][1])
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        for k in range(1, 9):
            page.mouse.move(box["x"] + x0 + (x1 - x0) * k / 8, box["y"] + y0 + (y1 - y0) * k / 8)
    page.mouse.up()
    page.keyboard.up("Shift")
    ids = map_ids(cache)
    inside = {ids[i] for i, (x, _, _) in enumerate(pixels) if x < right}
    wait_until(page, "n => document.querySelector('#map-count').dataset.n === String(n)", len(inside))
    page.screenshot(path=str(tmp_path / "lasso.png"))
    page.click("#map-accept")
    wait_until(page, "n => document.querySelector('#label-total').dataset.n === String(n)", len(inside))
    labels = list_labels(cache)
    assert set(labels.column("id").to_pylist()) == inside
    assert set(labels.column("label").to_pylist()) == {"accept"}
    page.click("#map-open")  # the same images as a grid
    wait_until(page, "() => new URLSearchParams(location.search).get('view') === 'lasso'")
    wait_until(page, "n => document.querySelectorAll('#grid .tile').length === n", len(inside))
    assert set(page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.id)")) == inside
    remove_labels(all=True, db=cache)


def test_label_next_asks_what_store_queue_asks_and_its_keys_label_and_advance(server, cache, page):
    from faramir.store.labels.queue import queue
    from faramir.store.labels.table import labels_of, remove_labels

    remove_labels(all=True, db=cache)
    page.goto(f"{server}/?head={HEAD}&t=0.5")
    page.wait_for_selector("#grid .tile")
    page.keyboard.press("n")
    wait_until(page, "() => new URLSearchParams(location.search).get('view') === 'queue'")
    want = queue(cache, limit=48, head=HEAD, threshold=0.5).rows.column("id").to_pylist()
    wait_until(page, "n => document.querySelectorAll('#grid .tile').length === n", len(want))
    assert page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.id)") == want
    page.keyboard.press("a")  # the first: accept, and the focus moves on
    wait_until(page, "id => document.querySelector(`.tile[data-id='${id}']`).dataset.curated === 'accept'", want[0])
    assert page.get_attribute("#grid .tile.focus", "data-id") == want[1]
    page.keyboard.press("r")
    wait_until(page, "id => document.querySelector(`.tile[data-id='${id}']`).dataset.curated === 'reject'", want[1])
    assert labels_of(want[:2], cache) == {want[0]: "accept", want[1]: "reject"}
    page.click("#queue-refresh")  # asked again: the labelled images are gone from the queue
    again = queue(cache, limit=48, head=HEAD, threshold=0.5).rows.column("id").to_pylist()
    wait_until(page, "ids => JSON.stringify([...document.querySelectorAll('#grid .tile')].map(e => e.dataset.id)) === JSON.stringify(ids)", again)
    assert not set(again) & set(want[:2])
    remove_labels(all=True, db=cache)


def test_after_a_finetune_the_diff_step_shows_what_changes_then_discards_or_uses_the_head(server, cache, page,
                                                                                          tmp_path):
    from faramir.store.heads.compare import disagreements, heads_diff
    from faramir.store.heads.registry import list_heads
    from faramir.store.labels.table import remove_labels, set_labels
    from faramir.store.queries.ranking import top

    ranked = top(cache, head=HEAD, threshold=0.5, limit=None).column("id").to_pylist()
    set_labels(ranked[:12], "reject", cache)  # the head's most confident accepts, rejected: the finetune moves
    set_labels(ranked[-12:], "accept", cache)
    for attempt, button in enumerate(("#diff-discard", "#diff-use")):
        page.goto(f"{server}/?head={HEAD}&t=0.5")
        page.wait_for_selector("#grid .tile")
        page.click("#finetune-btn")
        page.fill("#ft-name", f"tuned-{attempt}")
        page.fill("#ft-epochs", "30")
        page.click("#ft-start")
        wait_until(page, "() => new URLSearchParams(location.search).get('view') === 'diff'", timeout=120)
        name = f"tuned-{attempt}"
        want = heads_diff(HEAD, name, cache, threshold=0.5)
        wait_until(page, "n => document.querySelector('#diff-summary').dataset.a2r === String(n)", want.accept_to_reject)
        assert page.get_attribute("#diff-summary", "data-r2a") == str(want.reject_to_accept)
        flips = disagreements(HEAD, name, cache, threshold=0.5, limit=60).rows.column("id").to_pylist()
        wait_until(page, "n => document.querySelectorAll('#grid .tile').length === n", len(flips))
        assert page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.id)") == flips
        assert new_url_head(page) == HEAD  # not live yet
        page.screenshot(path=str(tmp_path / f"diff-{attempt}.png"))
        page.click(button)
        wait_until(page, "() => (new URLSearchParams(location.search).get('view') || 'grid') === 'grid'")
        names = {h.name for h in list_heads(cache)}
        if button == "#diff-discard":
            assert name not in names and new_url_head(page) == HEAD
        else:
            assert name in names
            wait_until(page, "h => new URLSearchParams(location.search).get('head') === h", name)
    remove_labels(all=True, db=cache)


def new_url_head(page) -> str:
    return page.evaluate("() => new URLSearchParams(location.search).get('head')")


def test_the_map_endpoints_send_binary_arrays(server, cache):
    import urllib.request

    import numpy as np

    info = json.load(urllib.request.urlopen(f"{server}/api/map"))
    with urllib.request.urlopen(f"{server}/api/map/points?key={info['key']}") as r:
        assert r.headers["Content-Type"] == "application/octet-stream"
        xy = np.frombuffer(r.read(), "<f4").reshape(-1, 2)
    from faramir.store.cache import Cache

    layout = Cache.open(cache).read("layout")
    assert np.array_equal(xy, np.stack([layout.column("x").to_numpy(), layout.column("y").to_numpy()], 1))
    with urllib.request.urlopen(f"{server}/api/map/colours?key={info['key']}&head={HEAD}&by=confidence") as r:
        conf = np.frombuffer(r.read(), "<f4")
    from faramir.store.queries.ranking import top

    want = {r["id"]: r["confidence"] for r in top(cache, head=HEAD, limit=None).to_pylist()}
    assert conf.tolist() == pytest.approx([want[i] for i in map_ids(cache)])
