"""A fitted layout as arrays: what placing a row needs, and nothing that runs code when loaded.

The model is stored in the cache (``layout_model``) as NumPy's .npz bytes and read back with
`allow_pickle=False`, so a cache handed over by someone else can hold numbers only: a pickled
UMAP object would run whatever its bytes say the moment it is loaded.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from faramir.store.errors import CacheError

ARRAYS = ("mean", "components", "reference", "coords")


@dataclass(frozen=True)
class LayoutModel:
    """A layout fitted on a sample of one embedding column."""

    fit: int  # the fit's id (its time in ns): every layout row placed with this model carries it
    embedding: str  # "faramir" or "siglip"
    mean: np.ndarray  # (D,) the sample's mean unit embedding
    components: np.ndarray  # (P, D) its principal axes: the space neighbours are found in
    reference: np.ndarray  # (S, P) the sample in that space
    coords: np.ndarray  # (S, 2) the sample's fitted layout
    a: float  # UMAP's curve parameters (from min_dist and spread)
    b: float
    neighbours: int  # k of the neighbour graph
    seed: int

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(N, D) embeddings → (N, P) in the model's space: unit length, centred, projected."""
        x = np.asarray(vectors, np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return (x - self.mean) @ self.components.T

    def to_bytes(self) -> bytes:
        meta = {"fit": self.fit, "embedding": self.embedding, "a": self.a, "b": self.b,
                "neighbours": self.neighbours, "seed": self.seed}
        out = io.BytesIO()
        np.savez(out, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 **{name: getattr(self, name).astype(np.float32) for name in ARRAYS})
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LayoutModel:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                arrays = {name: z[name] for name in ARRAYS}
        except (ValueError, KeyError, OSError) as ex:
            raise CacheError(f"the stored map layout model cannot be read ({ex}); run 'faramir map --refit'") from None
        return cls(fit=int(meta["fit"]), embedding=str(meta["embedding"]), a=float(meta["a"]), b=float(meta["b"]),
                   neighbours=int(meta["neighbours"]), seed=int(meta["seed"]), **arrays)
