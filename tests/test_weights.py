"""Weights: strict loading with named keys, refusal of pickles that run code, generated weights."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from faramir.checkpoints import load_pth
from faramir.errors import WeightsError, WeightsNotFound
from faramir.fake_weights import generate
from faramir.weights import (
    AESTHETIC_FILE,
    ARNIQA_FILE,
    FARAMIR_FILE,
    SIGLIP_FILE,
    WEIGHT_FILES,
    load_model,
)


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


@pytest.mark.parametrize("file, key", [
    (FARAMIR_FILE, "head.linear_4.weight"),
    (ARNIQA_FILE, "projector.0.bias"),
    (AESTHETIC_FILE, "scoring_head.0.weight"),
])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_refused_by_key(weights_copy, file, key, bad):
    def poison(state):
        state[key].view(-1)[0] = bad

    _edit(weights_copy / file, poison)
    with pytest.raises(WeightsError, match=rf"{file}: non-finite values \(NaN or infinity\) in {key}; "):
        load_model(weights_copy)


def test_non_finite_trunk_values_are_refused_by_key(weights_copy):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = weights_copy / SIGLIP_FILE
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    state["blocks.0.attn.qkv.weight"][3, 5] = float("nan")
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(WeightsError, match=r"model\.safetensors: non-finite values \(NaN or infinity\) in "
                                           r"blocks\.0\.attn\.qkv\.weight; "):
        load_model(weights_copy)


def test_non_finite_head_checkpoint_is_refused(tiny_dir, tmp_path):
    from faramir.checkpoints import load_head_checkpoint, save_state_dict

    state = load_pth(tiny_dir / FARAMIR_FILE)
    state["norm.ap_norm.stddev"] = torch.full_like(state["norm.ap_norm.stddev"], float("nan"))
    save_state_dict(state, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match=r"nan\.pth: non-finite values \(NaN or infinity\) in norm\.ap_norm\.stddev; "):
        load_head_checkpoint(tmp_path / "nan.pth", load_model(tiny_dir).info.config)


def test_a_head_checkpoint_of_integers_is_refused_like_one_of_other_shapes(tiny_dir, tmp_path):
    """Loading casts an integer tensor into a float module without a word: refused by dtype, as by shape."""
    from faramir.checkpoints import load_head_checkpoint, save_state_dict

    state = {k: v.to(torch.int64) if k.startswith(("norm.", "head.")) else v
             for k, v in load_pth(tiny_dir / FARAMIR_FILE).items()}
    save_state_dict(state, tmp_path / "ints.pth")
    with pytest.raises(WeightsError, match=r"ints\.pth: does not match the model; wrong dtypes: "
                                           r"norm\.ap_norm\.weight int64, .*\(26 in all\), where the model holds "
                                           r"floating point$"):
        load_head_checkpoint(tmp_path / "ints.pth", load_model(tiny_dir).info.config)


def test_an_expert_file_of_other_dtypes_is_refused_and_an_integer_buffer_must_stay_one(weights_copy):
    _edit(weights_copy / ARNIQA_FILE, lambda s: s.update({"projector.0.weight": s["projector.0.weight"].to(torch.int32)}))
    with pytest.raises(WeightsError, match=r"ARNIQA\.pth: does not match the model; wrong dtypes: "
                                           r"projector\.0\.weight int32, where the model holds floating point$"):
        load_model(weights_copy)
    _edit(weights_copy / ARNIQA_FILE, lambda s: s.update({"projector.0.weight": s["projector.0.weight"].float(),
                                                         "model.1.num_batches_tracked": torch.tensor(0.0)}))
    with pytest.raises(WeightsError, match=r"wrong dtypes: model\.1\.num_batches_tracked float32, where the "
                                           r"model holds integers$"):
        load_model(weights_copy)


def test_cli_weights_check_refuses_non_finite_values(weights_copy):
    from typer.testing import CliRunner

    from faramir.cli.app import app

    _edit(weights_copy / FARAMIR_FILE, lambda s: s["head.linear_4.weight"].view(-1).__setitem__(0, float("nan")))
    result = CliRunner().invoke(app, ["weights", "check", str(weights_copy)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and "non-finite values" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_fingerprints_hash_the_tensors_not_the_file_bytes(tmp_path):
    """The same tensors saved twice are the same experts, whatever the files' bytes."""
    first = generate(tmp_path / "first", "tiny", seed=0)
    second = generate(tmp_path / "second", "tiny", seed=0)
    assert (first / SIGLIP_FILE).read_bytes() != (second / SIGLIP_FILE).read_bytes() or \
        (first / FARAMIR_FILE).read_bytes() != (second / FARAMIR_FILE).read_bytes()
    assert load_model(first).info.experts_fingerprint == load_model(second).info.experts_fingerprint


def test_generate_never_overwrites_weight_files_without_force(tmp_path):
    dest = generate(tmp_path / "w", "tiny", seed=0)
    before = {name: (dest / name).read_bytes() for name in WEIGHT_FILES}
    with pytest.raises(WeightsError, match=r"already holds weight files \(faramir-v1\.pth, .*\); "
                                           r"choose another directory, or pass --force to overwrite them$"):
        generate(dest, "tiny", seed=1)
    assert {name: (dest / name).read_bytes() for name in WEIGHT_FILES} == before
    (dest / ARNIQA_FILE).unlink()  # one file is enough to refuse
    with pytest.raises(WeightsError, match="already holds weight files"):
        generate(dest, "tiny", seed=1)
    generate(dest, "tiny", seed=1, force=True)
    assert load_model(dest).info.generated.endswith("seed 1: random values, scores mean nothing")


def test_cli_generate_refuses_to_overwrite_without_force(tmp_path):
    from typer.testing import CliRunner

    from faramir.cli.app import app

    runner = CliRunner()
    args = ["weights", "generate", "--to", str(tmp_path / "w")]
    assert runner.invoke(app, args).exit_code == 0
    before = (tmp_path / "w" / FARAMIR_FILE).read_bytes()
    result = runner.invoke(app, [*args, "--seed", "3"])
    assert result.exit_code == 1 and "pass --force to overwrite them" in result.stderr
    assert (tmp_path / "w" / FARAMIR_FILE).read_bytes() == before
    assert runner.invoke(app, [*args, "--seed", "3", "--force"]).exit_code == 0
    assert (tmp_path / "w" / FARAMIR_FILE).read_bytes() != before
