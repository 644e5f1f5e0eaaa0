"""The gallery's API through FastAPI's test client, on a real cache ingested from generated images
with tiny generated weights: the grid, counts, labels and exports equal what `store` and the CLI
give; reads never open a path sent by the client; writes need the token, the page's origin and a
server that is not read-only; malformed requests get a 4xx with a one-line reason."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
import time

import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the gallery needs the 'serve' extra: pip install 'faramir[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from faramir.cli.app import app as cli_app  # noqa: E402
from faramir.gallery.app import create_app  # noqa: E402
from faramir.store.heads.compare import disagreements  # noqa: E402
from faramir.store.queries.ranking import top  # noqa: E402
from tests.conftest import cli  # noqa: E402
from tests.gallery_helpers import ingested_cache, spread_head  # noqa: E402

runner = CliRunner()
BASE = "http://127.0.0.1:8765"
HEAD = "spread"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_weights):
    """36 generated images ingested, one more whose original is gone since, and a head whose
    confidences spread over (0, 1)."""
    root = tmp_path_factory.mktemp("gallery-api")
    db = ingested_cache(root, tiny_weights, n=36)
    from faramir.store.ingestion import ingest_all
    from tests.conftest import write_images

    gone = write_images(root / "gone", 1, size=(50, 40), seed=99, prefix="gone")[0]
    ingest_all([gone], db=db, weights_dir=tiny_weights, device="cpu", workers=0)
    gone_id = hashlib.sha256(gone.read_bytes()).hexdigest()
    shutil.rmtree(root / "gone")
    spread_head(db, tiny_weights, HEAD)
    return {"db": db, "root": root, "gone": gone_id, "work": root / "work"}


@pytest.fixture(scope="module")
def gallery(cache):
    app = create_app(cache["db"], work=cache["work"])
    return app, TestClient(app, base_url=BASE)


def writes(app) -> dict:
    return {"X-Faramir-Token": app.state.token}


def one_line_error(response, status: int | tuple = (400, 499)) -> str:
    if isinstance(status, int):
        assert response.status_code == status, response.text
    else:
        assert status[0] <= response.status_code <= status[1], response.text
    reason = response.json()["error"]
    assert reason and "\n" not in reason and "Traceback" not in reason
    return reason


def walk_grid(client, **params) -> list[dict]:
    rows, after = [], None
    while True:
        q = {**params, "limit": 7, **({"after": after} if after else {})}
        page = client.get("/api/grid", params=q).json()
        rows += page["rows"]
        if page["next"] is None:
            return rows
        after = page["next"]


VIEWS = [
    ({}, {}),
    ({"show": "accepted", "threshold": 0.35}, {"accepted": True, "threshold": 0.35}),
    ({"show": "rejected", "threshold": 0.62, "order": "asc"}, {"accepted": False, "threshold": 0.62, "descending": False}),
    ({"sort": "aesthetic", "min_aesthetic": 0.039}, {"sort": "aesthetic", "min_aesthetic": 0.039}),
    ({"label": ["2d_human", "3d_rig"], "threshold": 0.5}, {"labels": ("2d_human", "3d_rig"), "threshold": 0.5}),
]


@pytest.mark.parametrize("params, filters", VIEWS)
def test_grid_order_and_filters_equal_store_top(cache, gallery, params, filters):
    _, client = gallery
    got = walk_grid(client, head=HEAD, **params)
    want = top(cache["db"], head=HEAD, limit=None, **filters).to_pylist()
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want):
        assert (g["confidence"], g["accepted"], g["label"], g["aesthetic_score"]) == \
            (w["confidence"], w["accepted"], w["label"], w["aesthetic_score"])


@pytest.mark.parametrize("t", [0.2, 0.5, 0.77])
@pytest.mark.parametrize("labels", [[], ["2d_human", "3d_rig", "text"]])
def test_counts_at_a_threshold_equal_faramir_stats(cache, gallery, t, labels):
    _, client = gallery
    got = client.get("/api/counts", params={"head": HEAD, "threshold": t, "label": labels}).json()
    args = ["stats", "--db", cache["db"], "--head", HEAD, "--threshold", t, "--json"]
    for label in labels:
        args += ["--label", label]
    want = json.loads(cli(*args))
    assert got == {"accepted": want["accepted"], "rejected": want["rejected"], "total": want["total"]}
    assert 0 < got["total"]


def test_labels_written_through_the_api_appear_in_faramir_labels_list(cache, gallery):
    app, client = gallery
    ids = [r["id"] for r in client.get("/api/grid", params={"head": HEAD, "limit": 6}).json()["rows"]]
    r = client.post("/api/labels", json={"ids": ids[:4], "label": "accept"}, headers=writes(app))
    assert r.status_code == 200 and r.json()["written"] == 4
    client.post("/api/labels", json={"ids": ids[3:6], "label": "2d_sketch"}, headers=writes(app))
    client.post("/api/labels", json={"ids": [ids[0]], "label": None}, headers=writes(app))
    listed = {row["id"]: row for row in map(json.loads, cli("labels", "list", "--db", cache["db"],
                                                             "--format", "jsonl").splitlines())}
    assert {i: listed[i]["label"] for i in ids[:6] if i in listed} == {
        ids[1]: "accept", ids[2]: "accept", ids[3]: "2d_sketch", ids[4]: "2d_sketch", ids[5]: "2d_sketch"}
    assert ids[0] not in listed and listed[ids[1]]["source"] == "gallery"
    counts = client.get("/api/labels").json()
    assert counts["total"] == len(listed) and counts["accept"] == sum(r["accept"] for r in listed.values())
    tiles = {r["id"]: r["curated"] for r in client.get("/api/grid", params={"head": HEAD, "limit": 6}).json()["rows"]}
    assert tiles == {ids[0]: None, ids[1]: "accept", ids[2]: "accept", ids[3]: "2d_sketch", ids[4]: "2d_sketch",
                     ids[5]: "2d_sketch"}
    client.post("/api/labels", json={"ids": ids[:6], "label": None}, headers=writes(app))


def test_detail_similar_accepted_and_compare(cache, gallery):
    _, client = gallery
    rows = top(cache["db"], head=HEAD, limit=None, threshold=0.5).to_pylist()
    ref = rows[len(rows) // 2]["id"]
    d = client.get(f"/api/image/{ref}", params={"threshold": 0.5}).json()
    assert [s["head"] for s in d["scores"]] == ["faramir-v1", HEAD]
    assert all(len(s["logits"]) == 31 for s in d["scores"]) and d["logit_names"][30] == "accept"
    near = client.get(f"/api/similar/{ref}", params={"head": HEAD, "threshold": 0.5, "show": "accepted", "k": 50}).json()
    accepted = {r["id"] for r in rows if r["accepted"]}
    assert near["rows"] and {r["id"] for r in near["rows"]} == accepted  # k above their number: all of them
    distances = [r["distance"] for r in near["rows"]]
    assert distances == sorted(distances)
    everything = client.get(f"/api/similar/{ref}", params={"head": HEAD, "k": 5}).json()["rows"]
    assert everything[0]["id"] == ref and everything[0]["distance"] == 0.0
    compare = client.get("/api/compare", params={"a": "faramir-v1", "b": HEAD, "threshold": 0.49}).json()
    want = disagreements("faramir-v1", HEAD, cache["db"], threshold=0.49, limit=60)
    assert compare["total"] == want.total > 0
    assert [r["id"] for r in compare["rows"]] == want.rows.column("id").to_pylist()


def test_export_equals_faramir_export(cache, gallery, tmp_path):
    _, client = gallery
    for fmt in ("csv", "jsonl"):
        r = client.get("/api/export", params={"head": HEAD, "threshold": 0.4, "show": "accepted", "format": fmt})
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        out = tmp_path / f"cli.{fmt}"
        runner.invoke(cli_app, ["export", str(out), "--db", str(cache["db"]), "--head", HEAD, "--threshold", "0.4",
                                "--accepted", "--sort", "confidence"])
        assert r.text == out.read_text()
    rows = list(csv.DictReader(io.StringIO(client.get("/api/export", params={"head": HEAD, "threshold": 0.4,
                                                                            "show": "accepted"}).text)))
    assert [r["id"] for r in rows] == [r["id"] for r in walk_grid(client, head=HEAD, threshold=0.4, show="accepted")]


def test_thumbnails_are_webp_at_most_256_cached_by_id_and_missing_originals_say_so(cache, gallery):
    from PIL import Image

    app, client = gallery
    image_id = top(cache["db"], limit=1).column("id")[0].as_py()
    r = client.get(f"/api/thumb/{image_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.format == "WEBP" and max(img.size) <= 256
    assert (cache["work"] / "thumbnails" / "thumb" / image_id[:2] / f"{image_id}.webp").read_bytes() == r.content
    gone = client.get(f"/api/thumb/{cache['gone']}")
    assert gone.status_code == 200 and gone.headers["content-type"].startswith("image/svg")
    assert b"original missing" in gone.content
    # the row stays usable: its details, and labelling it
    assert client.get(f"/api/image/{cache['gone']}").json()["paths"][0].endswith("gone00000.png")
    r = client.post("/api/labels", json={"ids": [cache["gone"]], "label": "reject"}, headers=writes(app))
    assert r.status_code == 200
    client.post("/api/labels", json={"ids": [cache["gone"]], "label": None}, headers=writes(app))


def test_a_client_path_dotdot_or_unknown_id_is_refused_and_never_opened(cache, gallery, tmp_path):
    _, client = gallery
    secret = tmp_path / "secret.png"
    shutil.copy(next((cache["root"] / "imgs").iterdir()), secret)
    opened = []

    def audit(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)) and "secret" in str(args[0]):
            opened.append(args[0])

    sys.addaudithook(audit)
    for url in (f"/api/thumb/{secret}", "/api/thumb/..%2F..%2Fetc%2Fpasswd", f"/api/image/{str(secret).replace('/', '%2F')}",
                f"/api/thumb/{'0' * 64}?path={secret}", f"/api/similar/{secret.name}", "/api/image/" + "A" * 64):
        r = client.get(url)
        assert 400 <= r.status_code < 500, url
    r = client.get("/api/thumb/../../etc/passwd")
    assert r.status_code == 404
    assert "no cached image has this id" in one_line_error(client.get(f"/api/image/{'0' * 64}"), 404)
    assert "not a content id" in one_line_error(client.get("/api/thumb/secret.png"), 400)
    assert opened == []


def test_writes_need_the_token_and_the_pages_origin(cache, gallery):
    app, client = gallery
    image_id = top(cache["db"], limit=1).column("id")[0].as_py()
    body = {"ids": [image_id], "label": "accept"}
    assert "X-Faramir-Token" in one_line_error(client.post("/api/labels", json=body), 403)
    assert "X-Faramir-Token" in one_line_error(
        client.post("/api/labels", json=body, headers={"X-Faramir-Token": "guess"}), 403)
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null"):
        reason = one_line_error(client.post("/api/labels", json=body, headers={**writes(app), "Origin": origin}), 403)
        assert "cross-origin" in reason
    reason = one_line_error(client.post("/api/labels", json=body, headers={**writes(app), "Sec-Fetch-Site": "cross-site"}), 403)
    assert "cross-origin" in reason
    assert client.post("/api/finetune", json={"epochs": 1}).status_code == 403
    assert client.get("/api/labels").json()["total"] == 0  # nothing was written
    ok = client.post("/api/labels", json=body, headers={**writes(app), "Origin": BASE, "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 200
    client.post("/api/labels", json={"ids": [image_id], "label": None}, headers=writes(app))
    page = client.get("/").text
    assert app.state.token in page and "default-src 'self'" in client.get("/").headers["content-security-policy"]


def test_read_only_refuses_every_write_and_serves_no_token(cache):
    app = create_app(cache["db"], read_only=True, work=cache["work"])
    client = TestClient(app, base_url=BASE)
    assert app.state.token is None
    image_id = top(cache["db"], limit=1).column("id")[0].as_py()
    for path, body in (("/api/labels", {"ids": [image_id], "label": "accept"}), ("/api/finetune", {"epochs": 1})):
        assert "read-only" in one_line_error(client.post(path, json=body, headers={"X-Faramir-Token": ""}), 403)
    assert 'name="faramir-token" content=""' in client.get("/").text
    assert client.get("/api/info").json()["read_only"] is True
    assert client.get("/api/grid").status_code == 200


def test_only_loopback_host_names_are_served(cache, gallery):
    _, client = gallery
    for host in ("evil.example", "evil.example:8765", "192.168.1.5:8765"):
        assert "not a loopback name" in one_line_error(client.get("/", headers={"host": host}), 403)
    for host in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765"):
        assert client.get("/api/info", headers={"host": host}).status_code == 200
    open_app = create_app(cache["db"], loopback_only=False, work=cache["work"])
    assert TestClient(open_app, base_url="http://gallery.lan:8765").get("/api/info").status_code == 200


BAD = [
    ("get", "/api/grid?threshold=abc", None), ("get", "/api/grid?threshold=1.5", None),
    ("get", "/api/grid?threshold=nan", None), ("get", "/api/grid?limit=0", None),
    ("get", "/api/grid?limit=100000", None), ("get", "/api/grid?sort=path", None),
    ("get", "/api/grid?order=sideways", None), ("get", "/api/grid?after=junk", None),
    ("get", "/api/grid?after=0.5," + "g" * 64, None), ("get", "/api/grid?label=bogus", None),
    ("get", "/api/grid?head=nope", None), ("get", "/api/grid?head=x'%20OR%201=1", None),
    ("get", "/api/grid?min_aesthetic=inf", None), ("get", "/api/grid?min_aesthetic=5&max_aesthetic=1", None),
    ("get", "/api/grid?show=maybe", None), ("get", "/api/grid?accepted=1&show=accepted&label=2d_sketch", None),
    ("get", "/api/counts?threshold=-1", None), ("get", "/api/image/xyz", None),
    ("get", "/api/similar/" + "0" * 64, None), ("get", "/api/compare?a=faramir-v1&b=faramir-v1", None),
    ("get", "/api/compare?a=faramir-v1", None), ("get", "/api/compare?a=faramir-v1&b=spread&offset=-1", None),
    ("get", "/api/export?format=xml", None), ("get", "/api/finetune/abc", None), ("get", "/api/finetune/99", None),
    ("post", "/api/labels", "not json"), ("post", "/api/labels", {"ids": "abc", "label": "accept"}),
    ("post", "/api/labels", {"ids": ["0" * 64], "label": "accept"}), ("post", "/api/labels", {"ids": []}),
    ("post", "/api/labels", {"ids": ["x"], "label": "accept"}), ("post", "/api/labels", {"ids": [], "label": "nope"}),
    ("post", "/api/finetune", {"base": "nope"}), ("post", "/api/finetune", {"epochs": 0}),
    ("post", "/api/finetune", {"name": "bad name!"}), ("post", "/api/finetune", {"epochs": "many"}),
]


@pytest.mark.parametrize("method, url, body", BAD)
def test_malformed_requests_get_a_4xx_with_one_line(gallery, method, url, body):
    app, client = gallery
    if method == "get":
        r = client.get(url)
    elif isinstance(body, str):
        r = client.post(url, content=body, headers={**writes(app), "Content-Type": "application/json"})
    else:
        r = client.post(url, json=body, headers=writes(app))
    one_line_error(r)


def test_finetune_from_the_page_registers_scores_and_evaluates_a_head(cache, gallery):
    app, client = gallery
    rows = top(cache["db"], head=HEAD, limit=None, threshold=0.5).to_pylist()
    ids_accept = [r["id"] for r in rows[:8]]
    ids_reject = [r["id"] for r in rows[-8:]]
    client.post("/api/labels", json={"ids": ids_accept, "label": "accept"}, headers=writes(app))
    client.post("/api/labels", json={"ids": ids_reject, "label": "reject"}, headers=writes(app))
    job = client.post("/api/finetune", json={"base": HEAD, "epochs": 3, "threshold": 0.5}, headers=writes(app)).json()
    assert job["name"] == f"{HEAD}-curated-1" and job["state"] == "training"
    busy = client.post("/api/finetune", json={"base": HEAD, "epochs": 3}, headers=writes(app))
    deadline = time.monotonic() + 900  # a hang guard, not a speed check
    while job["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"the finetune job never ended: {job}"
        assert client.get("/api/counts", params={"head": HEAD}).status_code == 200  # the page stays served
        time.sleep(0.2)
        job = client.get(f"/api/finetune/{job['id']}").json()
    assert job["state"] == "done", job["error"]
    assert busy.status_code in (200, 400)  # refused while the first ran, unless that had already finished
    e = job["evaluation"]
    assert e["n"] == 16 and set(e) >= {"mcc", "precision", "recall", "best"} and 0 <= e["best"]["threshold"] <= 1
    assert job["epoch"] <= 3 and job["rows"] == len(rows)
    assert job["name"] in client.get("/api/info").json()["heads"]
    want = json.loads(cli("evaluate", "--db", cache["db"], "--head", job["name"], "--format", "json"))
    assert e["mcc"] == pytest.approx(want["mcc"]) and e["best"]["threshold"] == want["best"]["threshold"]
    grid = walk_grid(client, head=job["name"])
    assert [r["id"] for r in grid] == top(cache["db"], head=job["name"], limit=None).column("id").to_pylist()
    client.post("/api/labels", json={"ids": ids_accept + ids_reject, "label": None}, headers=writes(app))


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_faramir_serve_prints_its_url_and_warns_off_loopback(cache, host, warned):
    import subprocess
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-c", "from faramir.cli.app import main; main()", "serve", "--db", str(cache["db"]),
         "--host", host, "--port", "0", "--read-only"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("faramir gallery on http://127.0.0.1:") and line.endswith("/ (read-only)"), line
        url = line.split()[3]
        with urllib.request.urlopen(url + "api/info", timeout=30) as r:
            assert json.loads(r.read())["read_only"] is True
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert ("Warning: binding 0.0.0.0" in err) is warned, err
