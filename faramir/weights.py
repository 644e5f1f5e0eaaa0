"""The weights directory: four files in their upstream formats, loaded strictly.

Layout (exactly these paths under one directory):

    faramir-v1.pth                                         FARAMIR: attn_pool.*, norm.*, head.*
    vit_so400m_patch14_siglip_384.webli/model.safetensors  SigLIP trunk, timm keys
    ARNIQA.pth                                             model.*, projector.*
    aesthetic_predictor_v2_5.pth                           scoring_head.*

Every `.pth` is read with `torch.load(weights_only=True)`; keys and shapes must match exactly.
Generated (fake) weights carry their config and seed in the safetensors metadata, which is how
the tiny variant is recognised and how every command knows to warn that scores mean nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from faramir.config import FULL, PREPROCESS_VERSION, FaramirConfig
from faramir.errors import WeightsError, WeightsNotFound

FARAMIR_FILE = "faramir-v1.pth"
SIGLIP_FILE = "vit_so400m_patch14_siglip_384.webli/model.safetensors"
ARNIQA_FILE = "ARNIQA.pth"
AESTHETIC_FILE = "aesthetic_predictor_v2_5.pth"
WEIGHT_FILES = (FARAMIR_FILE, SIGLIP_FILE, ARNIQA_FILE, AESTHETIC_FILE)

SOURCES = {  # where each file comes from, for messages and the downloader
    FARAMIR_FILE: "github.com/redhottensors/FARAMIR (repository root)",
    SIGLIP_FILE: "huggingface.co/timm/vit_so400m_patch14_siglip_384.webli",
    ARNIQA_FILE: "github.com/miccunifi/ARNIQA (release 'weights')",
    AESTHETIC_FILE: "github.com/discus0434/aesthetic-predictor-v2-5 (models/)",
}

META_CONFIG = "faramir.config"  # safetensors metadata: FaramirConfig JSON of generated weights
META_GENERATED = "faramir.generated"  # safetensors metadata: how fake weights were made


def missing_files(weights_dir: str | os.PathLike) -> list[str]:
    root = Path(weights_dir)
    return [name for name in WEIGHT_FILES if not (root / name).is_file()]


def missing_message(weights_dir: str | os.PathLike, missing: list[str], why: str = "") -> str:
    listing = "; ".join(f"{name} (from {SOURCES[name]})" for name in missing)
    reason = f" ({why})" if why else ""
    return (
        f"FARAMIR weights missing in {weights_dir}{reason}: {listing}. Put them there, or pass "
        f"--weights-dir DIR / set FARAMIR_WEIGHTS to a directory holding all four, or run "
        f"'faramir weights download --to DIR' on a machine with network access."
    )


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


def load_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth` file, refusing anything but plain tensors (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as ex:
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else "unsafe pickle"
        raise WeightsError(
            f"{path}: refused, it holds more than tensors and could run code "
            f"(weights_only load failed: {first}); use the original file from its source"
        ) from ex
    except Exception as ex:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({ex}); re-download it") from ex
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; use the original file from its source")
    return dict(state)


def check_state_dict(path, state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise WeightsError naming missing keys, unexpected keys and wrong shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            shown = ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"{path}: does not match the model; " + "; ".join(problems))


def shapes_of(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def as_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float32 (upstream copies checkpoints into float32 modules)."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def split_faramir_checkpoint(state: dict[str, torch.Tensor]):
    """(attn_pool.* without prefix, norm.* + head.*) of a FARAMIR checkpoint."""
    pool = {k[len("attn_pool."):]: v for k, v in state.items() if k.startswith("attn_pool.")}
    head = {k: v for k, v in state.items() if not k.startswith("attn_pool.")}
    return pool, head


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes, in key order: equal iff the weights are equal."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class WeightsInfo:
    """What a loaded model was made from; the fingerprints key the cache."""

    weights_dir: str
    config: FaramirConfig
    generated: str | None  # description of fake weights, None for real ones
    experts_fingerprint: str  # trunk + stock pool + aesthetic + ARNIQA + FARAMIR pool + preprocessing
    pool_fingerprint: str  # FARAMIR attn_pool.* alone
    head_fingerprint: str  # FARAMIR norm.* + head.*


def load_model(weights_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """A ready `FaramirModel` (eval mode, float32) from a complete weights directory."""
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
    trunk_state = load_file(str(trunk_path))
    check_state_dict(trunk_path, trunk_state, shapes_of(experts.trunk))
    experts.trunk.load_state_dict(as_float32(trunk_state), assign=True)

    arniqa_state = load_pth(root / ARNIQA_FILE)
    check_state_dict(root / ARNIQA_FILE, arniqa_state, shapes_of(experts.quality))
    experts.quality.load_state_dict(as_float32(arniqa_state), assign=True)

    aesthetic_state = load_pth(root / AESTHETIC_FILE)
    check_state_dict(root / AESTHETIC_FILE, aesthetic_state, shapes_of(experts.aesthetic))
    experts.aesthetic.load_state_dict(as_float32(aesthetic_state), assign=True)

    faramir_state = load_pth(root / FARAMIR_FILE)
    expected = {**shapes_of(experts.faramir_pool, "attn_pool."), **shapes_of(head)}
    check_state_dict(root / FARAMIR_FILE, faramir_state, expected)
    pool_state, head_state = split_faramir_checkpoint(as_float32(faramir_state))
    experts.faramir_pool.load_state_dict(pool_state, assign=True)
    head.load_state_dict(head_state, assign=True)

    for name, t in [*experts.named_parameters(), *experts.named_buffers(), *head.state_dict().items()]:
        assert not t.is_meta, f"{name} was not loaded from the weights directory"

    pool_fp = tensor_digest(pool_state)
    experts_fp = hashlib.sha256(
        json.dumps({
            "preprocess": PREPROCESS_VERSION,
            "trunk": cached_file_digest(trunk_path),
            "arniqa": tensor_digest(arniqa_state),
            "aesthetic": tensor_digest(aesthetic_state),
            "faramir_pool": pool_fp,
        }, sort_keys=True).encode()
    ).hexdigest()
    info = WeightsInfo(
        weights_dir=str(root),
        config=cfg,
        generated=generated,
        experts_fingerprint=experts_fp,
        pool_fingerprint=pool_fp,
        head_fingerprint=tensor_digest(head_state),
    )
    return FaramirModel(experts, head, info).eval().to(device)


def _digest_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "faramir" / "file-digests.json"


def cached_file_digest(path: str | os.PathLike) -> str:
    """sha256 of a large file, remembered by (path, size, mtime) so a 1.7 GB trunk is hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _digest_cache_path()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = file_digest(path)
    cache[key] = digest
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only home only costs a re-hash next time
    return digest


def load_head_checkpoint(path: str | os.PathLike, cfg: FaramirConfig = FULL):
    """A head checkpoint in upstream's key format: a full `faramir-v1.pth` (39 keys) or one with
    only `norm.*` and `head.*`. Returns (FaramirHead in eval mode, head state, pool fingerprint
    or None for a head-only file, head fingerprint)."""
    from faramir.experts import build_trunk
    from faramir.head import FaramirHead

    state = load_pth(path)
    pool_state, head_state = split_faramir_checkpoint(state)
    head = FaramirHead(cfg)
    expected = shapes_of(head)
    if pool_state:
        with torch.device("meta"):
            pool = build_trunk(cfg).attn_pool
        expected = {**shapes_of(pool, "attn_pool."), **expected}
    check_state_dict(path, state, expected)
    head_state = as_float32(head_state)
    head.load_state_dict(head_state)
    pool_fp = tensor_digest(as_float32(pool_state)) if pool_state else None
    return head.eval(), head_state, pool_fp, tensor_digest(head_state)


def head_to_bytes(head_state: dict[str, torch.Tensor]) -> bytes:
    """norm.* + head.* as safetensors bytes (stored in the cache so ingest can score new rows)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in head_state.items()})


def head_from_bytes(data: bytes, cfg: FaramirConfig):
    from safetensors.torch import load

    from faramir.head import FaramirHead

    head = FaramirHead(cfg)
    head.load_state_dict(load(data))
    return head.eval()
