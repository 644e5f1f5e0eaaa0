"""The SigLIP text tower against open_clip itself, with the same generated weights: text vectors
equal open_clip's `encode_text`, and open_clip's `encode_image` on the same preprocessed tensor
equals the cached `siglip_embedding` (both towers share one space). Strict loading, the
generated tokenizer in the real formats."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

open_clip = pytest.importorskip("open_clip", reason="the text extra is not installed")

from faramir.config import TINY  # noqa: E402
from faramir.errors import WeightsError, WeightsNotFound  # noqa: E402
from faramir.fake_weights import generate_text  # noqa: E402
from faramir.preprocess import load_image  # noqa: E402
from faramir.text import TEXT_FULL, TEXT_TINY  # noqa: E402
from faramir.text_weights import (  # noqa: E402
    TEXT_DIR,
    TEXT_FILES,
    TEXT_MODEL_FILE,
    expected_specs,
    load_text_encoder,
    missing_text_files,
)
from faramir.weights import SIGLIP_FILE  # noqa: E402

MODEL = "ViT-SO400M-14-SigLIP-384"
SENTENCES = [
    "a dragon over water",
    "Accepted images of a CASTLE, at night!",
    "zebra-crossing 42 ünïcödé",
    "",
    "the " * 80,  # longer than the context: truncated, </s> kept
]


def open_clip_model(cfg_text, monkeypatch):
    """open_clip's own SigLIP model (CustomTextCLIP) from its bundled ViT-SO400M-14-SigLIP-384
    config, text sizes set to `cfg_text`. open_clip's TimmModel passes no size overrides to
    timm, so for the tiny trunk timm.create_model gets the tiny sizes added (what TimmModel asks
    for is otherwise unchanged: the SigLIP so400m model, num_classes=0, global_pool='map')."""
    import timm

    cfg = json.loads(json.dumps(open_clip.get_model_config(MODEL)))
    cfg.pop("custom_text")
    cfg["embed_dim"] = cfg_text.embed_dim
    cfg["text_cfg"].update(cfg_text.open_clip_text_cfg())
    monkeypatch.setattr(timm, "create_model", functools.partial(timm.create_model, **TINY.trunk_kwargs))
    model = open_clip.CustomTextCLIP(**cfg)
    monkeypatch.undo()
    return model.eval()


@pytest.fixture(scope="module")
def reference(tiny_weights):
    """open_clip's model holding the generated tiny trunk (visual.trunk.*) and text tower (text.*)."""
    mp = pytest.MonkeyPatch()
    model = open_clip_model(TEXT_TINY, mp)
    trunk = {f"visual.trunk.{k}": v for k, v in load_file(str(tiny_weights / SIGLIP_FILE)).items()}
    missing, unexpected = model.load_state_dict({**trunk, **load_file(str(tiny_weights / TEXT_MODEL_FILE))},
                                                strict=False)
    assert sorted(missing) == ["logit_bias", "logit_scale"] and unexpected == []
    return model


def test_full_config_is_open_clips(monkeypatch):
    bundled = open_clip.get_model_config(MODEL)
    assert bundled["embed_dim"] == TEXT_FULL.embed_dim
    ours = TEXT_FULL.open_clip_text_cfg()
    assert {k: bundled["text_cfg"][k] for k in ours} == ours
    assert bundled["text_cfg"]["hf_tokenizer_name"] == "timm/ViT-B-16-SigLIP"
    assert bundled["text_cfg"]["tokenizer_kwargs"] == {"clean": "canonicalize"}
    with torch.device("meta"):  # open_clip's full model, built without memory
        model = open_clip.CustomTextCLIP(**{k: v for k, v in bundled.items() if k != "custom_text"})
    theirs = {f"text.{k}": tuple(v.shape) for k, v in model.text.state_dict().items()}
    assert theirs == {k: spec.shape for k, spec in expected_specs(TEXT_FULL).items()}
    assert theirs["text.transformer.resblocks.26.mlp.c_fc.weight"] == (4304, 1152)


def test_text_vectors_equal_open_clips_encode_text(tiny_weights, reference, tmp_path):
    # open_clip's tokenizer as its factory makes it from the model config (context 64,
    # clean="canonicalize"), reading the generated tokenizer files.
    tok_dir = tmp_path / "tok"
    shutil.copytree(tiny_weights / TEXT_DIR, tok_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    (tok_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(MODEL)}))
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tok_dir}")
    with torch.no_grad():
        want = reference.encode_text(tokenizer(SENTENCES), normalize=True).numpy()
    encoder = load_text_encoder(tiny_weights)
    assert torch.equal(encoder.tokenize(SENTENCES), tokenizer(SENTENCES))
    got = encoder.encode(SENTENCES)
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), TEXT_TINY.embed_dim)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # different sentences, different vectors


def test_tokens_pad_with_eos_and_truncation_keeps_it(tiny_weights):
    tokens = load_text_encoder(tiny_weights).tokenize(["A Dragon, over WATER!", "the " * 80])
    assert tokens.shape == (2, 64)
    first = tokens[0].tolist()
    assert first[:5] == load_text_encoder(tiny_weights).tokenize(["a dragon over water"])[0].tolist()[:5]
    assert first[4:] == [1] * 60  # four words, then </s> (id 1) as end and padding
    assert tokens[1, -1].item() == 1 and (tokens[1, :-1] != 1).all()


def test_image_tower_of_open_clip_equals_the_cached_siglip_embedding(tiny_weights, reference, tmp_path,
                                                                    make_images):
    from faramir.store.cache import Cache
    from faramir.store.ingestion import ingest_all

    paths = make_images(tmp_path / "imgs", 3, size=(450, 300))
    ingest_all([tmp_path / "imgs"], db=tmp_path / "db", weights_dir=tiny_weights, workers=0, device="cpu")
    rows = Cache.open(tmp_path / "db").read("images", ["paths", "siglip_embedding"]).to_pylist()
    cached = {row["paths"][0]: np.asarray(row["siglip_embedding"], np.float32) for row in rows}
    for path in paths:
        xb, _ = load_image(str(path))  # the preprocessed backbone input in [0, 1]
        x = (torch.as_tensor(np.asarray(xb)).float()[None] - 0.5) / 0.5  # SigLIP's mean = std = 0.5
        with torch.no_grad():
            theirs = reference.encode_image(x).numpy()[0]
        np.testing.assert_allclose(cached[str(path)], theirs, rtol=1e-5, atol=1e-5)


def test_missing_entry_names_the_files_and_the_fix(tmp_path):
    with pytest.raises(WeightsNotFound) as info:
        load_text_encoder(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for name in TEXT_FILES:
        assert name in message
    assert "faramir weights download --text" in message


def test_wrong_keys_and_shapes_are_named(tmp_path):
    generate_text(tmp_path, "tiny", 0)
    path = tmp_path / TEXT_MODEL_FILE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state["text.ln_final.weight"] = torch.ones(7)
    del state["text.positional_embedding"]
    state["text.logit_scale"] = torch.ones(())
    save_file(state, str(path), metadata=meta)
    with pytest.raises(WeightsError) as info:
        load_text_encoder(tmp_path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "missing keys: text.positional_embedding" in message
    assert "unexpected keys: text.logit_scale" in message
    assert "text.ln_final.weight (7,) != (32,)" in message


def test_generated_tokenizer_is_in_the_real_formats(tiny_weights):
    from transformers import AutoTokenizer

    root = tiny_weights / TEXT_DIR
    config = json.loads((root / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "T5Tokenizer" and config["pad_token"] == "</s>"
    assert json.loads((root / "tokenizer.json").read_text())["model"]["type"] == "Unigram"
    tok = AutoTokenizer.from_pretrained(str(root))
    assert tok.pad_token_id == 1 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    assert missing_text_files(tiny_weights) == []


def test_the_image_side_is_never_read(tmp_path):
    generate_text(tmp_path, "tiny", 0)  # a directory with only the text entry
    assert not (tmp_path / SIGLIP_FILE).exists()
    vectors = load_text_encoder(tmp_path).encode(["a castle"])
    assert vectors.shape == (1, 32)


@pytest.mark.slow
def test_full_size_text_tower_equals_open_clips(tmp_path_factory, monkeypatch):
    """The full config (27 blocks of 1152, 32,000 tokens) with generated weights, against the
    text tower open_clip builds from its bundled config (the one CustomTextCLIP holds)."""
    from open_clip.model import _build_text_tower

    root = generate_text(tmp_path_factory.mktemp("text-full"), "full", 0)
    bundled = open_clip.get_model_config(MODEL)
    tower = _build_text_tower(bundled["embed_dim"], bundled["text_cfg"]).eval()
    state = load_file(str(root / TEXT_MODEL_FILE))
    tower.load_state_dict({k[len("text."):]: v for k, v in state.items()})
    encoder = load_text_encoder(root)
    tokens = encoder.tokenize(SENTENCES)
    with torch.no_grad():
        want = torch.nn.functional.normalize(tower(tokens), dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(SENTENCES), want, atol=1e-5, rtol=0)
