"""Checkpoints in upstream's key format: strict loading, key checks, the FARAMIR checkpoint's
parts (`attn_pool.*`, `norm.*` + `head.*`), head-only copies, and atomic saving.

Every `.pth` is read with `torch.load(weights_only=True)`: no code in a checkpoint ever runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from faramir.config import FULL, TRAINED_PREFIXES, FaramirConfig
from faramir.digests import tensor_digest
from faramir.errors import WeightsError
from faramir.files import atomic_path

if TYPE_CHECKING:
    from faramir.head import FaramirHead


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


class Spec(NamedTuple):
    """What a module expects of one tensor of a checkpoint: its shape, and whether it is floating
    point (any float width loads: the module casts it to float32, as upstream's loading does)."""

    shape: tuple[int, ...]
    floating: bool


def check_state_dict(path, state: dict[str, torch.Tensor], expected: dict[str, Spec]) -> None:
    """Raise WeightsError naming missing keys, unexpected keys, wrong shapes and wrong kinds of
    numbers (an integer tensor where the model holds floats would be cast silently), else naming
    the tensors holding NaN or infinity (a model with one gives NaN for every image)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    present = [k for k in expected if k in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
             for k in present if tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            problems.append(f"{label}: {_listing(items)}")
    for floating, kind in ((True, "floating point"), (False, "integers")):
        items = [f"{k} {str(state[k].dtype).removeprefix('torch.')}" for k in present
                 if expected[k].floating == floating and state[k].is_floating_point() != floating]
        if items:
            problems.append(f"wrong dtypes: {_listing(items)}, where the model holds {kind}")
    if problems:
        raise WeightsError(f"{path}: does not match the model; " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{path}: non-finite values (NaN or infinity) in {_listing(bad)}; the file is "
                           f"damaged, replace it with a good copy")


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f", … ({len(keys)} in all)" if len(keys) > 6 else "")


def specs_of(module: torch.nn.Module | dict[str, torch.Tensor], prefix: str = "") -> dict[str, Spec]:
    """What a checkpoint of `module` (or one like this state dict) must hold, its keys with `prefix`."""
    state = module if isinstance(module, dict) else module.state_dict()
    return {prefix + k: Spec(tuple(v.shape), v.is_floating_point()) for k, v in state.items()}


def as_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float32 (upstream copies checkpoints into float32 modules)."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def split_faramir_checkpoint(state: dict[str, torch.Tensor]):
    """(attn_pool.* without prefix, norm.* + head.*) of a FARAMIR checkpoint."""
    pool = {k[len("attn_pool."):]: v for k, v in state.items() if k.startswith("attn_pool.")}
    head = {k: v for k, v in state.items() if not k.startswith("attn_pool.")}
    return pool, head


def load_head_checkpoint(path: str | os.PathLike, cfg: FaramirConfig = FULL, known_pool: str | None = None):
    """A head checkpoint in upstream's key format: a full `faramir-v1.pth` (39 keys) or one with
    only `norm.*` and `head.*`. Returns (FaramirHead in eval mode, head state, pool fingerprint
    or None for a head-only file, head fingerprint).

    `known_pool`: the fingerprint of an attention pool checked before (a cache's). An
    `attn_pool.*` with that fingerprint is those very tensors, so its shapes are not checked
    again: that check builds timm's pool, and importing timm takes seconds on a small CPU."""
    from faramir.head import FaramirHead

    state = load_pth(path)
    pool_state, head_state = split_faramir_checkpoint(state)
    head = FaramirHead(cfg)
    expected = specs_of(head)
    pool_fp = tensor_digest(as_float32(pool_state)) if pool_state else None
    if pool_state and pool_fp == known_pool:
        expected = {**specs_of(pool_state, "attn_pool."), **expected}
    elif pool_state:
        from faramir.experts import build_trunk

        with torch.device("meta"):
            pool = build_trunk(cfg).attn_pool
        expected = {**specs_of(pool, "attn_pool."), **expected}
    check_state_dict(path, state, expected)
    head_state = as_float32(head_state)
    head.load_state_dict(head_state)
    return head.eval(), head_state, pool_fp, tensor_digest(head_state)


def head_to_bytes(head_state: dict[str, torch.Tensor]) -> bytes:
    """norm.* + head.* as safetensors bytes (stored in the cache so ingest can score new rows)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in head_state.items()})


def head_state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """norm.* + head.* from the bytes `head_to_bytes` made."""
    from safetensors.torch import load

    return load(data)


def head_from_bytes(data: bytes, cfg: FaramirConfig):
    from faramir.head import FaramirHead

    head = FaramirHead(cfg)
    head.load_state_dict(head_state_from_bytes(data))
    return head.eval()


def frozen_fingerprint(head_state: dict[str, torch.Tensor]) -> str:
    """Fingerprint of what a finetune never changes: every `norm.*` and `head.*` tensor outside the
    trained modules (ChannelNorm buffers, linear_1, activation_1, linear_2), as float32.

    Heads with equal frozen fingerprints compute the same gated logits `v` and free units `f` for
    every row; only their decisions differ. `attn_pool.*` keys, if present, are ignored."""
    frozen = {k: v for k, v in head_state.items()
              if not k.startswith(("attn_pool.", *TRAINED_PREFIXES))}
    return tensor_digest(as_float32(frozen))


def trained_state_dict(base_state: dict[str, torch.Tensor], head: FaramirHead) -> dict[str, torch.Tensor]:
    """The base checkpoint with only `head.linear_3.*`, `head.activation_2.*`, `head.linear_4.*` replaced.

    `base_state` is a full FARAMIR checkpoint (`attn_pool.*`, `norm.*`, `head.*`; 39 keys) or a
    head-only one (`norm.*`, `head.*`). The result has exactly its keys in its order. Trained
    tensors come from `head` as contiguous CPU float32; every other tensor is a copy of the base's
    (same dtype, bit-identical). Raises ValueError if the keys do not fit the head or if any
    head tensor outside the trained modules differs from the base (the head was not loaded from
    this checkpoint, or something changed it).
    """
    current = head.state_dict()
    missing = [k for k in current if k not in base_state]
    unexpected = [k for k in base_state if k not in current and not k.startswith("attn_pool.")]
    if missing or unexpected:
        raise ValueError(
            f"base checkpoint does not fit the head: missing {missing or 'none'}; "
            f"unexpected {unexpected or 'none'}"
        )
    changed = []
    out: dict[str, torch.Tensor] = {}
    for key, base in base_state.items():
        if key.startswith(TRAINED_PREFIXES):
            t = current[key].detach().to(device="cpu", dtype=torch.float32)
            if t.shape != base.shape:
                raise ValueError(f"{key}: head has shape {tuple(t.shape)}, base {tuple(base.shape)}")
            out[key] = t.contiguous().clone()
            continue
        if key in current:
            mine = current[key].detach().cpu()
            if mine.shape != base.shape or not torch.equal(mine, base.detach().cpu().to(mine.dtype)):
                changed.append(key)
        out[key] = base.detach().cpu().contiguous().clone()
    if changed:
        raise ValueError(
            f"the head differs from the base checkpoint outside the trained modules ({_listing(changed)}); "
            f"load the head from this base before finetuning"
        )
    return out


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """torch.save a plain dict of tensors atomically (`faramir.files.atomic_path`); without
    `overwrite`, FileExistsError if `path` exists, even if it appeared meanwhile.

    The file loads with `torch.load(path, weights_only=True)`, like upstream's checkpoint.
    """
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"not a plain state dict of tensors: {bad[:6]}")
    plain = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(plain, tmp)
    return path
