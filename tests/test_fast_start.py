"""Stage-two commands start fast: `top`, `stats`, `similar` on a cached reference, `export`, `heads
list`, `labels list` and an `ingest` that finds nothing new never import torch, timm or
torchvision (nor LanceDB: they read through Lance), and the no-op ingest commits nothing. The
gallery (`faramir serve`) starts and serves its reads without them too.

Each command runs in a fresh interpreter, which reports the heavy modules it loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_images

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "lancedb")
PROBE = """
import json, sys
out, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["faramir", *argv]
from faramir.cli.app import main
try:
    main()
    code = 0
except SystemExit as ex:
    code = ex.code or 0
with open(out, "w") as f:
    json.dump({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}, f)
""" % (HEAVY,)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_weights):
    """Three images ingested with the tiny weights, and labels for them."""
    from faramir.store.ingestion import ingest_all
    from faramir.store.labels.files import import_labels

    root = tmp_path_factory.mktemp("fast")
    images = write_images(root / "imgs", 3)
    ingest_all([root / "imgs"], db=root / "db", weights_dir=tiny_weights, device="cpu", workers=0)
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{p},accept\n" for p in images))
    import_labels(root / "labels.csv", db=root / "db")
    return root, images


def run(tmp_path: Path, *args) -> dict:
    out = tmp_path / "probe.json"
    env = {**os.environ, "FARAMIR_WEIGHTS": "/nonexistent"}  # nothing may need the weights
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert out.is_file(), done.stderr
    result = json.loads(out.read_text())
    assert result["code"] == 0, done.stderr
    return result


def test_the_probe_sees_torch_when_a_command_loads_it(cache, tmp_path, tiny_weights):
    root, images = cache
    got = run(tmp_path, "assess", images[0], "--weights-dir", tiny_weights, "--device", "cpu", "--workers", "0")
    assert "torch" in got["loaded"]


@pytest.mark.parametrize("command", [
    ["top", "--limit", "3"],
    ["stats"],
    ["stats", "--format", "json"],
    ["heads", "list"],
    ["labels", "list"],
    ["similar", "FIRST_IMAGE", "--k", "2"],
    ["export", "OUT/out.csv", "--accepted"],
    ["export", "OUT/files", "--limit", "2"],
])
def test_stage_two_commands_load_no_torch_and_no_lancedb(cache, tmp_path, command):
    root, images = cache
    args = [str(images[0]) if a == "FIRST_IMAGE" else a.replace("OUT", str(tmp_path)) for a in command]
    assert run(tmp_path, *args, "--db", root / "db")["loaded"] == []


def test_an_ingest_that_finds_nothing_new_loads_no_torch_and_commits_nothing(cache, tmp_path):
    import lance

    root, _ = cache
    tables = sorted(p.name for p in (root / "db").glob("*.lance"))
    assert len(tables) == 8  # images, files, failures, heads, labels, layout, layout_model, meta
    before = {name: lance.dataset(root / "db" / name).version for name in tables}
    got = run(tmp_path, "ingest", root / "imgs", "--db", root / "db")
    assert got["loaded"] == []
    assert {name: lance.dataset(root / "db" / name).version for name in tables} == before


GALLERY_PROBE = """
import json, sys
out, db, work = sys.argv[1:4]
from fastapi.testclient import TestClient
from faramir.gallery.app import create_app
client = TestClient(create_app(db, work=work), base_url="http://127.0.0.1:8765")
codes = [client.get(url).status_code for url in ("/", "/api/info", "/api/counts", "/api/labels", "/api/export")]
first = client.get("/api/grid", params={"limit": 2}).json()["rows"][0]["id"]
codes += [client.get(url).status_code for url in (f"/api/image/{first}", f"/api/thumb/{first}",
                                                  f"/api/similar/{first}?k=2")]
with open(out, "w") as f:
    json.dump({"codes": codes, "loaded": sorted(m for m in %r if m in sys.modules)}, f)
""" % (HEAVY,)


def test_the_gallery_serves_its_reads_without_torch_and_without_lancedb(cache, tmp_path):
    pytest.importorskip("fastapi", reason="the gallery needs the 'serve' extra")
    root, _ = cache
    out = tmp_path / "probe.json"
    env = {**os.environ, "FARAMIR_WEIGHTS": "/nonexistent"}
    done = subprocess.run([sys.executable, "-c", GALLERY_PROBE, str(out), str(root / "db"), str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.is_file(), done.stderr
    result = json.loads(out.read_text())
    assert result == {"codes": [200] * 8, "loaded": []}
