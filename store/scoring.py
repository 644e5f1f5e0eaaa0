"""Stage two arithmetic: a head over cached vectors → the score columns of one head."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from faramir.config import LABELS, N_ACCEPT, N_CLASSES
from faramir.head import FaramirHead

_LABELS = np.array(LABELS, dtype=object)


def vectors(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list<float32> column as a (N, dim) float32 array, without copying when it can."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)


@torch.inference_mode()
def head_outputs(head: FaramirHead, ap: np.ndarray, ae: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N, 31) float32 logits: cat(v, d), exactly as `faramir assess` computes them."""
    out = head(torch.from_numpy(ap), torch.from_numpy(ae), torch.from_numpy(q))
    return out.numpy()


def score_arrays(outputs: np.ndarray) -> dict[str, pa.Array]:
    """The five score columns (unprefixed names) from (N, 31) logits."""
    v = outputs[:, :N_CLASSES]
    d = outputs[:, N_CLASSES]
    confidence = torch.from_numpy(d).sigmoid().numpy()  # torch's sigmoid, as assess uses
    accept = _LABELS[v[:, :N_ACCEPT].argmax(axis=1)]
    reject = _LABELS[N_ACCEPT + v[:, N_ACCEPT:].argmax(axis=1)]
    logits = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v).reshape(-1)), N_CLASSES)
    return {
        "decision": pa.array(d, pa.float32()),
        "confidence": pa.array(confidence, pa.float32()),
        "accept_label": pa.array(accept, pa.string()),
        "reject_label": pa.array(reject, pa.string()),
        "logits": logits,
    }


def score_columns(prefix: str, head: FaramirHead, ap, ae, q) -> dict[str, pa.Array]:
    """{"P_decision": ..., ...} for one head over (N, D), (N, 16), (N, 128) float32 arrays."""
    return {f"{prefix}_{k}": v for k, v in score_arrays(head_outputs(head, ap, ae, q)).items()}
