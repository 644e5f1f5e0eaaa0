"""Fingerprints: digests of tensors, remembered on disk for large weight files.

A fingerprint names what made a vector or a score (weights + preprocessing), so the cache can
refuse to mix vectors from different experts and can tell which pool a head was trained on. It
is a digest of the tensors (names, dtypes, shapes, values), never of a file's bytes: the same
tensors saved twice (another safetensors header, another pickle layout) are the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from faramir.files import atomic_path, sha256_file


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes, in key order: equal iff the weights are equal."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the tensor's own memory, not a copy
    return h.hexdigest()


def _digest_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "faramir" / "file-digests.json"


def remembered_digest(path: str | os.PathLike, kind: str, compute: Callable[[], str]) -> str:
    """`compute()`, a digest of what file `path` holds, remembered by (kind, path, size, mtime)
    in the user's cache folder, so the 1.7 GB trunk is hashed once, not at every start."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{kind}|{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _digest_cache_path()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = compute()
    cache[key] = digest
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps(cache))
    except OSError:
        pass  # a read-only home only costs a re-hash next time
    return digest


def cached_file_digest(path: str | os.PathLike) -> str:
    """sha256 of a large file's bytes, remembered (`remembered_digest`); for a file's identity,
    not for weights (see above)."""
    return remembered_digest(path, "file", lambda: sha256_file(path))
