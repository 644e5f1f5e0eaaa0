"""The weights directory (its layout: `faramir.locations`): four files in their upstream formats,
loaded strictly.

Every `.pth` is read with `torch.load(weights_only=True)`; keys and shapes must match exactly.
Generated (fake) weights carry their config and seed in the safetensors metadata, which is how
the tiny variant is recognised and how every command knows to warn that scores mean nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from faramir.checkpoints import as_float32, check_state_dict, load_pth, specs_of, split_faramir_checkpoint
from faramir.config import FULL, PREPROCESS_VERSION, FaramirConfig
from faramir.digests import cached_file_digest, remembered_digest, tensor_digest
from faramir.errors import WeightsError, WeightsNotFound
from faramir.locations import (  # noqa: F401 (the layout, re-exported: weights and their directory go together)
    AESTHETIC_FILE,
    ARNIQA_FILE,
    FARAMIR_FILE,
    SIGLIP_FILE,
    SOURCES,
    WEIGHT_FILES,
    missing_files,
    missing_message,
)

META_CONFIG = "faramir.config"  # safetensors metadata: FaramirConfig JSON of generated weights
META_GENERATED = "faramir.generated"  # safetensors metadata: how fake weights were made


def read_generated_info(weights_dir: str | os.PathLike) -> tuple[FaramirConfig, str | None]:
    """(config, generated-description or None) from the trunk file's safetensors metadata."""
    path = Path(weights_dir) / SIGLIP_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as ex:
        raise WeightsError(f"{path}: not a readable safetensors file ({ex}); re-download it") from ex
    cfg = FaramirConfig.from_json(meta[META_CONFIG]) if META_CONFIG in meta else FULL
    return cfg, meta.get(META_GENERATED)


@dataclass(frozen=True)
class WeightsInfo:
    """What a loaded model was made from; the fingerprints key the cache."""

    weights_dir: str
    config: FaramirConfig
    generated: str | None  # description of fake weights, None for real ones
    experts_fingerprint: str  # trunk + stock pool + aesthetic + ARNIQA + FARAMIR pool + preprocessing
    pool_fingerprint: str  # FARAMIR attn_pool.* alone
    head_fingerprint: str  # FARAMIR norm.* + head.*


def load_model(weights_dir: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "fp32"):
    """A ready `FaramirModel` (eval mode) from a complete weights directory, its experts laid out
    for `precision` ("fp32", the reference, or "bf16"; see `Experts.prepare`)."""
    from faramir.experts import Experts
    from faramir.head import FaramirHead
    from faramir.model import FaramirModel

    root = Path(weights_dir)
    missing = missing_files(root)
    if missing:
        raise WeightsNotFound(missing_message(root, missing))
    cfg, generated = read_generated_info(root)

    with torch.device("meta"):  # no random init of 400M parameters only to overwrite them
        experts = Experts(cfg)
        head = FaramirHead(cfg)

    trunk_path = root / SIGLIP_FILE
    trunk_state = _load_into(experts.trunk, trunk_path, load_file(str(trunk_path)))
    arniqa_state = _load_into(experts.quality, root / ARNIQA_FILE, load_pth(root / ARNIQA_FILE))
    aesthetic_state = _load_into(experts.aesthetic, root / AESTHETIC_FILE, load_pth(root / AESTHETIC_FILE))

    faramir_state = load_pth(root / FARAMIR_FILE)
    expected = {**specs_of(experts.faramir_pool, "attn_pool."), **specs_of(head)}
    check_state_dict(root / FARAMIR_FILE, faramir_state, expected)
    pool_state, head_state = split_faramir_checkpoint(as_float32(faramir_state))
    experts.faramir_pool.load_state_dict(pool_state, assign=True)
    head.load_state_dict(head_state, assign=True)

    for name, t in [*experts.named_parameters(), *experts.named_buffers(), *head.state_dict().items()]:
        assert not t.is_meta, f"{name} was not loaded from the weights directory"

    pool_fp = tensor_digest(pool_state)
    trunk_fp = trunk_fingerprint(trunk_path, trunk_state)
    del trunk_state
    info = WeightsInfo(
        weights_dir=str(root),
        config=cfg,
        generated=generated,
        experts_fingerprint=_experts_fingerprint(trunk_fp, tensor_digest(arniqa_state),
                                                 tensor_digest(aesthetic_state), pool_fp),
        pool_fingerprint=pool_fp,
        head_fingerprint=tensor_digest(head_state),
    )
    experts.prepare(precision)  # before moving: a bf16 model crosses to the device at half the size
    return FaramirModel(experts, head, info).eval().to(device)


def _experts_fingerprint(trunk: str, arniqa: str, aesthetic: str, faramir_pool: str) -> str:
    """What keys the cache's vectors: the four experts' digests and the preprocessing version."""
    return hashlib.sha256(json.dumps({
        "preprocess": PREPROCESS_VERSION, "trunk": trunk, "arniqa": arniqa, "aesthetic": aesthetic,
        "faramir_pool": faramir_pool,
    }, sort_keys=True).encode()).hexdigest()


def trunk_fingerprint(path: str | os.PathLike, state: dict[str, torch.Tensor] | None = None) -> str:
    """The trunk file's tensor digest, remembered by file (hashing 1.7 GB takes seconds); `state`:
    its tensors, when they are loaded already."""
    return remembered_digest(path, "tensors", lambda: tensor_digest(state if state is not None else load_file(str(path))))


def file_bytes_experts_fingerprint(weights_dir: str | os.PathLike) -> str:
    """The experts fingerprint as older caches (schema 1 and 2) recorded it: the trunk by its
    file's bytes rather than its tensors. Only to recognise such a cache as made by these weights."""
    root = Path(weights_dir)
    pool, _ = split_faramir_checkpoint(as_float32(load_pth(root / FARAMIR_FILE)))
    return _experts_fingerprint(cached_file_digest(root / SIGLIP_FILE),
                                tensor_digest(load_pth(root / ARNIQA_FILE)),
                                tensor_digest(load_pth(root / AESTHETIC_FILE)), tensor_digest(pool))


def _load_into(module: torch.nn.Module, path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check `state` against `module`'s keys and shapes, load it as float32; return it."""
    check_state_dict(path, state, specs_of(module))
    module.load_state_dict(as_float32(state), assign=True)
    return state
