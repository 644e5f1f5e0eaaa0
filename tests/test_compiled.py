"""The opt-in compiled mode (`--compile`): torch.compile'd experts give the eager model's results,
compile once per run (smaller batches are padded), and say in one line when they cannot compile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.compiled import compile_experts
from faramir.pipeline import Assessment, assess
from faramir.sources import Source
from faramir.store import Cache
from faramir.store.ingestion.write import EMBEDDING_FIELDS
from faramir.weights import load_model

runner = CliRunner()

needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                               reason="torch.compile needs a C++ compiler on the CPU (apt-get install g++)")


@pytest.fixture
def folder(tmp_path, make_images):
    """Seven images and a broken file: batches of 4 come as 4 images, then 3 (one file fails)."""
    root = tmp_path / "imgs"
    make_images(root, 7, size=(70, 50), seed=3)
    (root / "img00004.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # in the second batch
    return root


def _results(model, root):
    sources = [Source(str(p), str(p)) for p in sorted(root.iterdir())]
    return list(assess(model, sources, 0.5, batch_size=4, workers=0))


@needs_cxx
def test_compiled_experts_give_the_eager_results_and_compile_once(tiny_weights, folder):
    eager = _results(load_model(tiny_weights), folder)
    model = load_model(tiny_weights)
    compile_experts(model, 4)
    assert model.fixed_batch == 4
    with torch._dynamo.config.patch(error_on_recompile=True):  # a batch of 3 must not compile again
        compiled = _results(model, folder)
    assert [type(r) for r in compiled] == [type(r) for r in eager]
    assert sum(not isinstance(r, Assessment) for r in compiled) == 1
    done = [(a, b) for a, b in zip(eager, compiled) if isinstance(a, Assessment)]
    assert len(done) == 6
    for a, b in done:
        assert (a.path, a.accepted, a.label) == (b.path, b.accepted, b.label)
        np.testing.assert_allclose(b.logits, a.logits, rtol=0, atol=1e-5)
        assert b.aesthetic_score == pytest.approx(a.aesthetic_score, abs=1e-5)


@needs_cxx
def test_ingest_compile_from_the_cli_stores_the_eager_vectors(tmp_path, tiny_weights, folder):
    dbs = {mode: tmp_path / f"{mode}.lancedb" for mode in ("eager", "compiled")}
    for mode, db in dbs.items():
        args = ["ingest", str(folder), "--db", str(db), "--weights-dir", str(tiny_weights), "--device", "cpu",
                "--batch-size", "4", "--workers", "0"] + (["--compile"] if mode == "compiled" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 3, result.output  # the broken file: partial, as without --compile
        assert ("compiled in" in result.stderr) == (mode == "compiled")
    eager, compiled = (Cache.open(db).images().to_arrow().sort_by("id") for db in dbs.values())
    assert compiled.num_rows == eager.num_rows == 6
    assert compiled.column("id").to_pylist() == eager.column("id").to_pylist()
    for name in EMBEDDING_FIELDS:
        a, b = (np.stack(t.column(name).to_numpy(zero_copy_only=False)) for t in (eager, compiled))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=name)
    decision = [c for c in eager.column_names if c.endswith("_decision")]
    assert decision and all(
        (eager.column(c).to_numpy() > 0).tolist() == (compiled.column(c).to_numpy() > 0).tolist() for c in decision)


def test_a_compile_that_fails_is_one_line_naming_the_fix(tiny_weights, folder):
    """No C++ compiler (CXX names none; no cached kernels to fall back on): one line, and no output."""
    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "faramir.cli", "assess", str(folder), "--weights-dir", str(tiny_weights), "--device",
         "cpu", "--batch-size", "4", "--workers", "0", "--compile"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode not in (0, 3), result.stderr
    errors = [line for line in result.stderr.splitlines() if "--compile:" in line]
    assert len(errors) == 1 and "g++" in errors[0] and "without --compile" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing assessed half-way
