"""Weights: strict loading with named keys, refusal of pickles that run code, generated weights."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from faramir.errors import WeightsError, WeightsNotFound
from faramir.fake_weights import generate
from faramir.weights import (
    AESTHETIC_FILE, ARNIQA_FILE, FARAMIR_FILE, SIGLIP_FILE, WEIGHT_FILES, load_model,
)
from faramir.checkpoints import load_pth


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("weights"), "tiny", seed=0)


@pytest.fixture
def weights_copy(tiny_dir, tmp_path):
    dest = tmp_path / "w"
    shutil.copytree(tiny_dir, dest)
    return dest


def test_generated_tiny_weights_load_and_are_labelled(tiny_dir):
    model = load_model(tiny_dir)
    assert model.info.config.variant == "tiny"
    assert "GENERATED" in model.info.generated and "seed 0" in model.info.generated
    assert not model.training and not model.head.training
    x = torch.rand(2, 3, 384, 384), torch.rand(2, 3, 512, 512)
    feats = model.features(*x)
    out = model.score(feats)
    assert out.shape == (2, 31) and torch.isfinite(out).all()
    assert feats.faramir_embedding.shape == (2, 32) and feats.quality_features.shape == (2, 128)
    assert feats.aesthetic_features.shape == (2, 16) and feats.aesthetic_score.shape == (2,)


def test_fingerprints_follow_the_weights(tiny_dir, tmp_path):
    other = generate(tmp_path / "other", "tiny", seed=1)
    a, b = load_model(tiny_dir).info, load_model(other).info
    assert a.experts_fingerprint != b.experts_fingerprint
    assert a.pool_fingerprint != b.pool_fingerprint and a.head_fingerprint != b.head_fingerprint
    assert load_model(tiny_dir).info == a  # deterministic


def _edit(path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def test_missing_key_is_named(weights_copy):
    _edit(weights_copy / FARAMIR_FILE, lambda s: s.pop("head.linear_4.bias"))
    with pytest.raises(WeightsError, match=r"faramir-v1\.pth: does not match the model; missing keys: head\.linear_4\.bias$"):
        load_model(weights_copy)


def test_unexpected_key_is_named(weights_copy):
    _edit(weights_copy / AESTHETIC_FILE, lambda s: s.update({"scoring_head.10.weight": torch.zeros(1)}))
    with pytest.raises(WeightsError, match=r"unexpected keys: scoring_head\.10\.weight$"):
        load_model(weights_copy)


def test_wrong_shape_is_named(weights_copy):
    _edit(weights_copy / ARNIQA_FILE, lambda s: s.update({"projector.2.bias": torch.zeros(127)}))
    with pytest.raises(WeightsError, match=r"wrong shapes: projector\.2\.bias \(127,\) != \(128,\)$"):
        load_model(weights_copy)


class _RunsCode:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-path-never-deleted",))


def test_pickle_that_would_run_code_is_refused(weights_copy, tmp_path):
    evil = weights_copy / FARAMIR_FILE
    with open(evil, "wb") as f:
        pickle.dump({"head.linear_4.bias": _RunsCode()}, f)
    with pytest.raises(WeightsError, match="refused, it holds more than tensors and could run code"):
        load_pth(evil)
    with pytest.raises(WeightsError, match="could run code"):
        load_model(weights_copy)


def test_trunk_file_with_wrong_keys_is_refused(weights_copy):
    from safetensors.torch import load_file, save_file

    path = weights_copy / SIGLIP_FILE
    state = load_file(str(path))
    state.pop("norm.weight")
    save_file(state, str(path))  # no metadata any more: it now claims to be the full-size trunk
    with pytest.raises(WeightsError, match=r"model\.safetensors: does not match the model; missing keys"):
        load_model(weights_copy)


def test_missing_files_listed_in_one_line(weights_copy):
    (weights_copy / ARNIQA_FILE).unlink()
    (weights_copy / SIGLIP_FILE).unlink()
    with pytest.raises(WeightsNotFound) as err:
        load_model(weights_copy)
    message = str(err.value)
    assert "\n" not in message
    assert ARNIQA_FILE in message and SIGLIP_FILE in message and FARAMIR_FILE not in message.split(":")[1]
    assert "--weights-dir" in message


def test_weight_file_layout_is_upstreams():
    assert WEIGHT_FILES == (
        "faramir-v1.pth",
        "vit_so400m_patch14_siglip_384.webli/model.safetensors",
        "ARNIQA.pth",
        "aesthetic_predictor_v2_5.pth",
    )
