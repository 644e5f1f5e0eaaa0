"""The text tower's entry in a weights directory: optional, beside the four image-side files.

Layout (under the weights directory):

    ViT-SO400M-14-SigLIP-384/text.safetensors       the text.* tensors of open_clip's checkpoint
    ViT-SO400M-14-SigLIP-384/tokenizer.json         open_clip's HF tokenizer files
    ViT-SO400M-14-SigLIP-384/tokenizer_config.json

Sources: the tower from the Hub repo `timm/ViT-SO400M-14-SigLIP-384` (`open_clip_model.safetensors`,
the whole SigLIP model: its `text.*` tensors are copied out unchanged, the image side and the
logit scale and bias are left behind); the tokenizer files from `timm/ViT-B-16-SigLIP`, the
tokenizer that model's open_clip config names. `faramir weights download --text` fetches them (or,
with FARAMIR_WEIGHTS_MIRROR, fetches this layout from the mirror); `faramir weights generate`
writes seeded random ones and a small generated tokenizer in the same formats
(`faramir.fake_weights.generate_text`).

Loading reads safetensors only (no pickle) and checks every key and shape against the tower
open_clip builds for the config, naming what differs. Generated files carry their config and
seed in the safetensors metadata, like the generated trunk.
"""

from __future__ import annotations

import os
from pathlib import Path

from faramir.errors import DownloadError, WeightsError, WeightsNotFound
from faramir.text import TEXT_FULL, TextConfig, TextEncoder, TextInfo, build_text_tower, build_tokenizer

TEXT_DIR = "ViT-SO400M-14-SigLIP-384"
TEXT_MODEL_FILE = f"{TEXT_DIR}/text.safetensors"
TOKENIZER_FILE = f"{TEXT_DIR}/tokenizer.json"
TOKENIZER_CONFIG_FILE = f"{TEXT_DIR}/tokenizer_config.json"
TEXT_FILES = (TEXT_MODEL_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)

TEXT_HF_REPO = "timm/ViT-SO400M-14-SigLIP-384"
TEXT_HF_FILE = "open_clip_model.safetensors"
TOKENIZER_HF_REPO = "timm/ViT-B-16-SigLIP"
HUB_FILES = {  # file in the weights directory → (Hub repo, file in it)
    TEXT_MODEL_FILE: (TEXT_HF_REPO, TEXT_HF_FILE),
    TOKENIZER_FILE: (TOKENIZER_HF_REPO, "tokenizer.json"),
    TOKENIZER_CONFIG_FILE: (TOKENIZER_HF_REPO, "tokenizer_config.json"),
}
PREFIX = "text."  # the tower's keys in open_clip's checkpoint, kept as they are in ours
META_TEXT_CONFIG = "faramir.text_config"  # safetensors metadata: TextConfig JSON of generated weights
META_SOURCE = "faramir.source"  # safetensors metadata: where extracted tensors came from


def missing_text_files(weights_dir: str | os.PathLike) -> list[str]:
    from faramir.locations import missing_files

    return missing_files(weights_dir, TEXT_FILES)


def missing_text_message(weights_dir: str | os.PathLike, missing: list[str], why: str = "") -> str:
    listing = "; ".join(f"{name} (from huggingface.co/{HUB_FILES[name][0]})" for name in missing)
    reason = f" ({why})" if why else ""
    return (
        f"text tower missing in {weights_dir}{reason}: {listing}. Run 'faramir weights download --text "
        f"--to {weights_dir}' on a machine with network access (or 'faramir weights generate' for "
        f"generated test weights), or pass --weights-dir DIR / set FARAMIR_WEIGHTS to a directory holding it."
    )


def tokenizer_dir(weights_dir: str | os.PathLike) -> Path:
    return Path(weights_dir) / TEXT_DIR


def expected_specs(cfg: TextConfig):
    """Key → shape and kind of the tower open_clip builds for `cfg`, with the checkpoint's `text.` prefix."""
    import torch

    from faramir.checkpoints import specs_of

    with torch.device("meta"):
        return specs_of(build_text_tower(cfg), PREFIX)


def read_text_info(path: str | os.PathLike) -> tuple[TextConfig, str | None]:
    """(config, generated-description or None) from the text file's safetensors metadata."""
    from safetensors import safe_open

    from faramir.weights import META_GENERATED

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as ex:
        raise WeightsError(f"{path}: not a readable safetensors file ({ex}); re-download it") from ex
    cfg = TextConfig.from_json(meta[META_TEXT_CONFIG]) if META_TEXT_CONFIG in meta else TEXT_FULL
    return cfg, meta.get(META_GENERATED)


def load_text_state(weights_dir: str | os.PathLike):
    """(config, generated-description or None, state dict without the `text.` prefix), checked
    key by key and shape by shape. WeightsNotFound when the entry is incomplete."""
    from safetensors.torch import load_file

    from faramir.checkpoints import as_float32, check_state_dict

    root = Path(weights_dir)
    missing = missing_text_files(root)
    if missing:
        raise WeightsNotFound(missing_text_message(root, missing))
    path = root / TEXT_MODEL_FILE
    cfg, generated = read_text_info(path)
    state = load_file(str(path))
    check_state_dict(path, state, expected_specs(cfg))
    return cfg, generated, {k[len(PREFIX):]: v for k, v in as_float32(state).items()}


def load_text_encoder(weights_dir: str | os.PathLike, device="cpu") -> TextEncoder:
    """The text tower and tokenizer of a weights directory's text entry, loaded with strict key
    and shape checks; nothing of the image side is read."""
    import torch

    cfg, generated, state = load_text_state(weights_dir)
    with torch.device("meta"):  # no random init of 400M parameters only to overwrite them
        tower = build_text_tower(cfg)
    tower.load_state_dict(state, assign=True)
    if not cfg.no_causal_mask:  # a non-persistent buffer, not in the file
        tower.attn_mask = tower.build_causal_mask()
    for name, t in [*tower.named_parameters(), *tower.named_buffers()]:
        assert not t.is_meta, f"{name} was not loaded from the text weights"
    tokenizer = build_tokenizer(tokenizer_dir(weights_dir), cfg)
    info = TextInfo(weights_dir=os.fspath(weights_dir), config=cfg, generated=generated)
    return TextEncoder(tower.to(device), tokenizer, info, device)


# ---------------------------------------------------------------------------- downloading


def extract_text_tower(source: str | os.PathLike, target: str | os.PathLike, origin: str) -> None:
    """Copy the `text.*` tensors of an open_clip SigLIP checkpoint (safetensors) into `target`,
    unchanged, refusing a checkpoint whose text tower is not ViT-SO400M-14-SigLIP-384's (named
    keys). A generated checkpoint's config and description (metadata) travel with it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from faramir.checkpoints import check_state_dict
    from faramir.weights import META_GENERATED

    try:
        with safe_open(str(source), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys() if k.startswith(PREFIX)}
    except Exception as ex:
        raise WeightsError(f"{source}: not a readable safetensors file ({ex}); download it again") from ex
    cfg = TextConfig.from_json(meta[META_TEXT_CONFIG]) if META_TEXT_CONFIG in meta else TEXT_FULL
    check_state_dict(source, state, expected_specs(cfg))
    kept = {k: v for k, v in meta.items() if k in (META_TEXT_CONFIG, META_GENERATED)}
    save_file(state, str(target), metadata={"format": "pt", **kept, META_SOURCE: f"{origin}: its text.* tensors"})


def download_text_weights(
    dest_dir: str | os.PathLike,
    *,
    progress=None,
    urls: dict[str, str] | None = None,
    hf_endpoint: str | None = None,
    only_missing: bool = True,
) -> list[Path]:
    """Fetch the text entry into `dest_dir`; return the paths written. As `download_weights`
    (`faramir.download.fetch`): `urls` (file → URL) first, then the Hub at `hf_endpoint`, then
    FARAMIR_WEIGHTS_MIRROR (this layout under it), else the Hub through huggingface_hub's cache;
    each file validated and renamed into place atomically."""
    from faramir.download import fetch

    return fetch(dest_dir, _weight_files(), progress=progress, urls=urls, hf_endpoint=hf_endpoint,
                 only_missing=only_missing)


def _weight_files():
    """The text entry's files as `faramir.download.WeightFile`s: from the Hub, the tower
    extracted from the whole model's file."""
    from faramir.download import WeightFile

    return tuple(WeightFile(name, hub=HUB_FILES[name], place=_place_extracted if name == TEXT_MODEL_FILE else None)
                 for name in TEXT_FILES)


def _place_extracted(cached: Path, target: Path, name: str, source: str) -> None:
    """`place` for the Hub's whole-model file: write only its text tower into place."""
    from faramir.download import describe, one_line
    from faramir.files import atomic_path

    try:
        with atomic_path(target, suffix=".part") as part:
            extract_text_tower(cached, part, source)
    except WeightsError as ex:
        reason = str(ex).removeprefix(f"{cached}: ")
        raise WeightsError(one_line(f"{target}: downloaded from {source} but rejected: {reason}")) from ex
    except OSError as ex:
        raise DownloadError(f"{name}: cannot write {target}: {describe(ex)}") from ex


def resolve_text_dir(explicit: str | os.PathLike | None = None, *, download: bool = True,
                     progress=None) -> Path:
    """The weights directory whose text entry a text query uses: `explicit`, else
    $FARAMIR_WEIGHTS (either must already hold the entry), else the default directory, where
    a missing entry is downloaded (unless `download` is False). The image-side files are not
    needed."""
    from faramir.download import resolve_dir

    return resolve_dir(explicit, _weight_files(), missing_text_message, download=download, progress=progress)
