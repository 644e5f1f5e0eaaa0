"""The text entry's downloader against a local HTTP server: the Hub's whole-model open_clip file
(only its text tower is kept) and the tokenizer repo's files, or a mirror in our layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from typer.testing import CliRunner

pytest.importorskip("open_clip", reason="the text extra is not installed")

from faramir import download as dl  # noqa: E402
from faramir.cli.app import app  # noqa: E402
from faramir.errors import WeightsError, WeightsNotFound  # noqa: E402
from faramir.fake_weights import generate_text  # noqa: E402
from faramir.text_weights import (  # noqa: E402
    HUB_FILES,
    TEXT_FILES,
    TEXT_MODEL_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    download_text_weights,
    load_text_encoder,
    missing_text_files,
    resolve_text_dir,
)
from faramir.weights import WEIGHT_FILES, missing_files  # noqa: E402
from tests.test_download import Server, closed_port, isolated_env, server, waits  # noqa: E402,F401

runner = CliRunner()


def hub_path(name: str) -> str:
    repo, filename = HUB_FILES[name]
    return f"/{repo}/resolve/main/{filename}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return generate_text(tmp_path_factory.mktemp("text"), "tiny", 0)


def whole_model(generated: Path, **replace: torch.Tensor) -> bytes:
    """An open_clip SigLIP checkpoint as the Hub holds it: image side, text side, logit scale and
    bias in one safetensors file (the generated tiny text tower, with its metadata)."""
    path = generated / TEXT_MODEL_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = {
        "visual.trunk.patch_embed.proj.weight": torch.randn(32, 3, 14, 14),
        "logit_scale": torch.tensor(4.7), "logit_bias": torch.tensor(-10.0),
        **load_file(str(path)), **replace,
    }
    return save_safetensors(state, metadata=meta)


def serve_hub(server: Server, generated: Path, **replace: torch.Tensor) -> None:
    server.files[hub_path(TEXT_MODEL_FILE)] = whole_model(generated, **replace)
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        server.files[hub_path(name)] = (generated / name).read_bytes()


def serve_mirror(server: Server, generated: Path) -> None:
    for name in TEXT_FILES:
        server.files[f"/mirror/{name}"] = (generated / name).read_bytes()


def test_downloads_the_text_tower_out_of_the_whole_model(server, generated, tmp_path):
    serve_hub(server, generated)
    seen: dict[str, tuple[int, int | None]] = {}
    dest = tmp_path / "w"

    written = download_text_weights(dest, hf_endpoint=server.base,
                                    progress=lambda name, done, total: seen.__setitem__(name, (done, total)))

    assert written == [dest / name for name in TEXT_FILES] and missing_text_files(dest) == []
    kept = load_file(str(dest / TEXT_MODEL_FILE))
    original = load_file(str(generated / TEXT_MODEL_FILE))
    assert sorted(kept) == sorted(original) and all(k.startswith("text.") for k in kept)
    assert all(torch.equal(kept[k], original[k]) for k in kept)  # copied unchanged
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        assert (dest / name).read_bytes() == (generated / name).read_bytes()
    assert set(seen) == set(TEXT_FILES)
    assert not [p for p in dest.rglob("*.part")]
    sentences = ["a dragon over water", "a castle"]
    np.testing.assert_array_equal(load_text_encoder(dest).encode(sentences),
                                  load_text_encoder(generated).encode(sentences))
    assert load_text_encoder(dest).info.generated.startswith("GENERATED tiny text tower")
    server.log.clear()
    assert download_text_weights(dest, hf_endpoint=server.base) == [] and server.log == []


def test_a_wrong_text_tower_is_refused_and_nothing_is_left(server, generated, tmp_path):
    serve_hub(server, generated, **{"text.ln_final.weight": torch.ones(7)})
    dest = tmp_path / "w"
    with pytest.raises(WeightsError) as info:
        download_text_weights(dest, hf_endpoint=server.base)
    message = str(info.value)
    assert "\n" not in message and "rejected" in message
    assert "text.ln_final.weight (7,) != (32,)" in message
    assert not (dest / TEXT_MODEL_FILE).exists() and not [p for p in dest.rglob("*.part")]


def test_a_mirror_serves_our_layout(server, generated, tmp_path, monkeypatch):
    serve_mirror(server, generated)
    monkeypatch.setenv(dl.MIRROR_ENV, f"{server.base}/mirror/")
    dest = tmp_path / "w"
    download_text_weights(dest)
    assert missing_text_files(dest) == []
    assert all(path.startswith("/mirror/") for _, path in server.log)
    assert (dest / TEXT_MODEL_FILE).read_bytes() == (generated / TEXT_MODEL_FILE).read_bytes()


def test_resolving_the_text_entry(server, generated, tmp_path, monkeypatch, closed_port, waits):  # noqa: F811
    named = tmp_path / "mine"
    named.mkdir()
    monkeypatch.setenv(dl.MIRROR_ENV, f"http://127.0.0.1:{closed_port}/")  # would fail if it were used
    with pytest.raises(WeightsNotFound) as info:
        resolve_text_dir(named)
    assert "\n" not in str(info.value) and "download failed" not in str(info.value)
    assert list(named.iterdir()) == []  # never downloaded into a directory the user named

    with pytest.raises(WeightsNotFound, match="download failed"):
        resolve_text_dir()  # the default directory, from an unreachable mirror
    assert sum(waits) < 1  # no backoff before giving up

    serve_mirror(server, generated)
    monkeypatch.setenv(dl.MIRROR_ENV, f"{server.base}/mirror/")
    assert resolve_text_dir() == dl.default_weights_dir()
    assert missing_text_files(dl.default_weights_dir()) == []
    assert missing_files(dl.default_weights_dir()) == list(WEIGHT_FILES)  # the image side: not needed


def test_cli_weights_download_text(server, generated, tmp_path, monkeypatch):
    serve_mirror(server, generated)
    monkeypatch.setenv(dl.MIRROR_ENV, f"{server.base}/mirror/")
    result = runner.invoke(app, ["weights", "download", "--to", str(tmp_path / "w"), "--text"])
    assert result.exit_code == 0, result.output
    assert missing_files(tmp_path / "w") == [] and missing_text_files(tmp_path / "w") == []
