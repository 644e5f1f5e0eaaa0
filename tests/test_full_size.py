"""Full-size checks (marked slow: `scripts/test -m slow`, a few minutes on 2 cores).

Upstream's dimensions with GENERATED weights (seed 0, or the directory `FARAMIR_FULL_WEIGHTS`
names): the SigLIP so400m trunk, ARNIQA's ResNet-50 and the released head's shapes, end to end from
the CLI on generated images. The tiny-model tests check the same paths; these prove nothing in the
tiny configuration hides a full-size difference (dims, batching, float32 accumulation).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.store.cache import Cache
from faramir.store.heads.rescore import rescore
from faramir.store.queries.ranking import top
from faramir.weights import FARAMIR_FILE

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def full_weights(tmp_path_factory) -> Path:
    given = os.environ.get("FARAMIR_FULL_WEIGHTS")
    if given and Path(given, FARAMIR_FILE).is_file():
        return Path(given)
    from faramir.fake_weights import generate

    return Path(generate(tmp_path_factory.mktemp("full-weights"), "full", 0, text=False))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three images through different loader paths: a large JPEG (resized, cropped), an RGBA PNG
    (premultiplied) and a palette PNG with transparency (read as its RGBA conversion)."""
    root = tmp_path_factory.mktemp("full-imgs")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 700, dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp * rng.random(3) + rng.normal(0, 30, (520, 700, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "large.jpg", quality=92)
    Image.fromarray(rng.integers(0, 256, (200, 300, 4), np.uint8), "RGBA").save(root / "alpha.png")
    palette = Image.fromarray(rng.integers(0, 256, (120, 90, 3), np.uint8)).quantize(16)
    palette.save(root / "palette.png", transparency=0)
    return root


def _assess(images: Path, weights: Path, precision: str) -> dict[str, dict]:
    result = runner.invoke(app, ["assess", str(images), "--format", "jsonl", "--weights-dir", str(weights),
                                 "--device", "cpu", "--precision", precision, "--workers", "0",
                                 "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    return {hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest(): r for r in rows}


@pytest.fixture(scope="module")
def assessed_fp32(images, full_weights):
    return _assess(images, full_weights, "fp32")


def test_full_size_cache_and_rescore_equal_assess(images, full_weights, assessed_fp32, tmp_path):
    db = tmp_path / "db"
    result = runner.invoke(app, ["ingest", str(images), "--db", str(db), "--weights-dir", str(full_weights),
                                 "--device", "cpu", "--workers", "1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "3 new, 0 unchanged, 0 duplicate, 0 failed" in result.stderr

    cache = Cache.open(db)
    rows = cache.images().to_arrow().to_pylist()
    assert len(rows) == 3
    assert all(len(r["faramir_embedding"]) == len(r["siglip_embedding"]) == 1152 for r in rows)
    assert all(len(r["aesthetic_features"]) == 16 and len(r["quality_features"]) == 128 for r in rows)

    rescore(full_weights / FARAMIR_FILE, "again", db=db)
    for head in ("faramir-v1", "again"):  # scored at ingest, and rescored from the cached vectors
        for row in top(db, head=head, limit=None).to_pylist():
            want = assessed_fp32[row["id"]]
            assert row["accepted"] == want["accepted"] and row["label"] == want["label"]
            # Batches of 2 (ingest) and 3 (assess) take different matmul paths: float32 rounding.
            np.testing.assert_allclose(row["decision"], want["logits"][30], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(row["confidence"], want["confidence"], rtol=0, atol=2e-5)
    for row in rows:
        assert abs(row["aesthetic_score"] - assessed_fp32[row["id"]]["aesthetic_score"]) <= 1e-4


def test_full_size_bf16_stays_close_to_fp32(images, full_weights, assessed_fp32):
    bf16 = _assess(images, full_weights, "bf16")
    for content_id, want in assessed_fp32.items():
        got = bf16[content_id]
        d32, d16 = want["logits"][30], got["logits"][30]
        assert np.isfinite(got["logits"]).all()
        # bf16 keeps 8 bits of mantissa through 27 trunk blocks; the decision logit moves, but
        # little against its own scale (bench/assess.py reports the deviation on real images).
        assert abs(d16 - d32) <= 0.1 + 0.05 * abs(d32), (content_id, d32, d16)


def test_full_size_channels_last_resnet_equals_nchw(full_weights):
    """ARNIQA's ResNet-50 runs channels_last in fp32 too: the same numbers as NCHW up to float32
    rounding (fp32 is the reference, so its layout may not move a result by more)."""
    import copy

    import torch

    from faramir.weights import load_model

    model = load_model(full_weights, "cpu", "fp32")
    resnet = model.experts.quality.model
    nchw = copy.deepcopy(resnet).to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = nchw(x.contiguous())
        got = resnet(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
