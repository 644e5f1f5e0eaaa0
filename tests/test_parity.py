"""Upstream parity: preprocessing bit-exact, pool/norm/head within float32 rounding, assess equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faramir import ImageLoadError, load_image
from faramir.checkpoints import load_head_checkpoint
from faramir.config import FULL, OUTPUT_NAMES
from faramir.head import assess_outputs
from tests.parity import PARITY, fixtures, needs_parity, recipe_checkpoint

pytestmark = needs_parity


def _preprocess_cases():
    if not (PARITY / "fixtures.json").is_file():
        return []
    return sorted(fixtures()["preprocess"].items())


@pytest.fixture(scope="module")
def expected_arrays():
    with np.load(PARITY / "preprocess_expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("name,info", _preprocess_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_preprocess_matches_upstream_bit_for_bit(name, info, expected_arrays):
    path = PARITY / "images" / name
    if f"{name}::xb" not in expected_arrays:
        # upstream raised and there is no expectation: we must raise one clear error naming the file
        with pytest.raises(ImageLoadError) as err:
            load_image(path)
        message = str(err.value)
        assert message.startswith(str(path) + ": ") and "\n" not in message
        return
    xb, xq = load_image(path)
    for got, key, shape in ((xb, "xb", (3, 384, 384)), (xq, "xq", (3, 512, 512))):
        want = expected_arrays[f"{name}::{key}"]
        assert got.dtype == np.float16 and got.shape == shape
        assert np.array_equal(got, want), f"{name} {key}: differs from upstream"


def test_broken_files_give_specific_reasons():
    reasons = {}
    for name in ("truncated.jpg", "not_an_image.png", "empty.jpg"):
        with pytest.raises(ImageLoadError) as err:
            load_image(PARITY / "images" / name)
        reasons[name] = err.value.reason
    assert reasons["empty.jpg"] == "empty file (0 bytes); re-copy it or remove it"
    assert reasons["not_an_image.png"] == "not an image format Pillow can read; convert it to PNG or JPEG"
    assert reasons["truncated.jpg"].startswith("image file is truncated")


@pytest.fixture(scope="module")
def head_case(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "faramir-v1.pth"
    torch.save(recipe_checkpoint(), path)
    with np.load(PARITY / "head_expected.npz") as npz:
        expected = {k: torch.from_numpy(npz[k]).float() for k in npz.files}
    return path, expected


def test_recipe_checkpoint_loads_through_our_loader(head_case):
    path, _ = head_case
    head, head_state, pool_fp, head_fp = load_head_checkpoint(path, FULL)
    assert len(head_state) == 26 and pool_fp is not None and head_fp
    assert not head.training


def test_pool_norm_and_head_match_upstream(head_case):
    from faramir.experts import Experts

    path, expected = head_case
    state = recipe_checkpoint()
    with torch.device("meta"):
        pool = Experts(FULL).faramir_pool
    pool.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("attn_pool.")}, assign=True)
    head = load_head_checkpoint(path, FULL)[0]
    with torch.no_grad():
        ap = pool.eval()(expected["tokens"])
        outputs, r, g = head.forward_all(expected["ap"], expected["ae"], expected["q"])
        end_to_end = head(ap, expected["ae"], expected["q"])
    assert (ap - expected["ap"]).abs().max() <= 1e-5
    assert (outputs - expected["outputs"]).abs().max() <= 1e-5
    assert (r - expected["r"]).abs().max() <= 1e-5
    assert (g - expected["g"]).abs().max() <= 1e-5
    assert (end_to_end - expected["outputs"]).abs().max() <= 1e-5


def test_assess_equals_upstream_at_every_threshold(head_case):
    _, expected = head_case
    fx = fixtures()
    assert list(OUTPUT_NAMES) == fx["output_names"]
    for threshold, rows in fx["assess"].items():
        accepted, label, confidence = assess_outputs(expected["outputs"], float(threshold))
        got = [[bool(a), OUTPUT_NAMES[int(i)], float(c)] for a, i, c in zip(accepted, label, confidence)]
        for mine, theirs in zip(got, rows):
            assert mine[:2] == theirs[:2], f"threshold {threshold}"
            assert mine[2] == pytest.approx(theirs[2], abs=1e-6)


def test_checkpoint_manifests_match_our_modules():
    from faramir.checkpoints import specs_of
    from faramir.experts import Experts

    fx = fixtures()
    with torch.device("meta"):
        experts = Experts(FULL)
    assert {k: list(v.shape) for k, v in specs_of(experts.quality).items()} == fx["arniqa_checkpoint_keys"]
    assert {k: list(v.shape) for k, v in specs_of(experts.aesthetic).items()} == fx["aesthetic_checkpoint_keys"]
