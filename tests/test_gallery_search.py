"""The gallery's search box through its API (FastAPI's test client), on a real cache ingested from
generated images with tiny generated weights (the text tower included): the answer equals
`faramir.store.vectors` with the view's filters; without a text entry the API says how to get one; the
text tower is loaded on the first search only, once, and the server's start and reads never
import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the gallery needs the 'serve' extra: pip install 'faramir[serve]'")
pytest.importorskip("open_clip", reason="search by text needs the text extra: pip install 'faramir[text]'")
from fastapi.testclient import TestClient  # noqa: E402

from faramir.fake_weights import generate_text  # noqa: E402
from faramir.gallery.app import create_app  # noqa: E402
from faramir.store.filters import Filter  # noqa: E402
from faramir.store.queries.ranking import top  # noqa: E402
from faramir.store.vectors.text import search  # noqa: E402
from faramir.text_weights import load_text_encoder  # noqa: E402
from tests.gallery_helpers import ingested_cache, spread_head  # noqa: E402
from tests.test_gallery_api import one_line_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1:8765"
HEAD = "spread"
TEXT = "a dragon over water"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("gallery-search")
    db = ingested_cache(root, tiny_weights, n=36)
    spread_head(db, tiny_weights, HEAD)
    return db


@pytest.fixture(scope="module")
def client(cache, tiny_weights, tmp_path_factory):
    app = create_app(cache, work=tmp_path_factory.mktemp("work"), weights_dir=tiny_weights)
    return TestClient(app, base_url=BASE)


@pytest.fixture(scope="module")
def encoder(tiny_weights):
    return load_text_encoder(tiny_weights)


def a_label(cache, threshold: float) -> str:
    """The most common label at the threshold under the spread head (one the filter keeps rows of)."""
    labels = top(cache, head=HEAD, threshold=threshold, limit=None).column("label").to_pylist()
    return max(set(labels), key=labels.count)


@pytest.mark.parametrize("params", [
    {},
    {"head": HEAD, "threshold": 0.5, "show": "accepted"},
    {"head": HEAD, "threshold": 0.5, "show": "rejected", "min_aesthetic": 0.0, "max_aesthetic": 10.0},
    {"head": HEAD, "threshold": 0.3, "label": "LABEL"},
])
def test_the_search_endpoint_equals_store_search_with_the_views_filters(cache, client, encoder, params):
    params = dict(params)
    if params.get("label") == "LABEL":
        params["label"] = a_label(cache, params["threshold"])
    got = client.get("/api/search", params={"q": TEXT, "k": 20, **params})
    assert got.status_code == 200, got.text
    rows = got.json()["rows"]
    f = Filter(head=params.get("head", "faramir-v1"), threshold=params.get("threshold", 0.5),
               accepted={"accepted": True, "rejected": False}.get(params.get("show")),
               labels=(params["label"],) if "label" in params else (),
               min_aesthetic=params.get("min_aesthetic"), max_aesthetic=params.get("max_aesthetic"))
    want = search(TEXT, cache, k=20, encoder=encoder, filter=f).to_pylist()
    assert want, "the filter keeps no row: the comparison would be empty"
    assert [r["id"] for r in rows] == [r["id"] for r in want]
    np.testing.assert_allclose([r["similarity"] for r in rows], [r["similarity"] for r in want], atol=1e-6)
    assert [r["accepted"] for r in rows] == [r["accepted"] for r in want]
    assert all(r["name"].endswith(".png") and "curated" in r for r in rows)


def test_the_text_tower_is_loaded_once_and_shared(cache, tiny_weights, tmp_path):
    app = create_app(cache, work=tmp_path / "work", weights_dir=tiny_weights)
    text = app.state.gallery.text
    client = TestClient(app, base_url=BASE)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: client.get("/api/search", params={"q": q, "k": 5}),
                                ["red", "blue", "red", "a cat"]))
    assert [a.status_code for a in answers] == [200] * 4
    assert answers[0].json() == answers[2].json()
    loaded = text._encoder
    assert loaded is not None and text.encoder() is loaded


def test_only_the_text_entry_is_needed(cache, tmp_path, encoder):
    generate_text(tmp_path / "w", "tiny", 0)  # no image-side file in this directory
    client = TestClient(create_app(cache, work=tmp_path / "work", weights_dir=tmp_path / "w"), base_url=BASE)
    assert client.get("/api/info").json()["search_unavailable"] is None
    rows = client.get("/api/search", params={"q": TEXT, "k": 3}).json()["rows"]
    assert [r["id"] for r in rows] == search(TEXT, cache, k=3, encoder=encoder).column("id").to_pylist()


def test_without_a_text_entry_the_api_says_how_to_get_one(cache, tmp_path):
    app = create_app(cache, work=tmp_path / "work", weights_dir=tmp_path / "no-weights")
    client = TestClient(app, base_url=BASE)
    why = client.get("/api/info").json()["search_unavailable"]
    assert "text tower missing" in why and "faramir weights download --text" in why
    reason = one_line_error(client.get("/api/search", params={"q": TEXT}), 503)
    assert reason == why
    assert app.state.gallery.text._encoder is None


@pytest.mark.parametrize("params, fragment", [
    ({}, "q: Field required"),
    ({"q": ""}, "the search text is empty"),
    ({"q": "   "}, "the search text is empty"),
    ({"q": "x" * 301}, "q: String should have at most 300 characters"),
    ({"q": TEXT, "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"q": TEXT, "label": "nonsense"}, "unknown label nonsense"),
    ({"q": TEXT, "head": "nope"}, "nope"),
])
def test_bad_queries_get_a_one_line_4xx(client, params, fragment):
    reason = one_line_error(client.get("/api/search", params=params), (400, 404))
    assert fragment in reason


PROBE = """
import json, sys
out, db, work, weights = sys.argv[1:5]
from fastapi.testclient import TestClient
from faramir.gallery.app import create_app
client = TestClient(create_app(db, work=work, weights_dir=weights), base_url="http://127.0.0.1:8765")
info = client.get("/api/info").json()
before = sorted(m for m in ("torch", "open_clip", "lancedb") if m in sys.modules)
search = client.get("/api/search", params={"q": "a red square", "k": 2})
after = sorted(m for m in ("torch", "open_clip", "timm") if m in sys.modules)
with open(out, "w") as f:
    json.dump({"available": info["search_unavailable"] is None, "before": before, "code": search.status_code,
               "after": after}, f)
"""


def test_the_server_starts_and_reads_without_torch_until_the_first_search(cache, tiny_weights, tmp_path):
    out = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), str(cache), str(tmp_path / "work"), str(tiny_weights)],
                          cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=180)
    assert out.is_file(), done.stderr
    got = json.loads(out.read_text())
    assert got["available"] and got["before"] == [] and got["code"] == 200
    assert "torch" in got["after"] and "open_clip" in got["after"]
