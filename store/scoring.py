"""Stage two arithmetic: a head over cached vectors → the score columns of one head."""

from __future__ import annotations

import warnings

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


class BatchScorer:
    """The head over many cached rows, for rescoring a whole table.

    The arithmetic is `FaramirHead.forward`'s, op for op (ChannelNorm, concatenation, gated head),
    so scores equal `faramir assess`'s; what differs is memory: the normalised, concatenated input
    lives in one buffer reused for every batch. At a million rows the per-batch allocations of
    the plain forward (three normalised copies, then their concatenation, each page-faulted in
    fresh) cost about as much as the matmul itself.
    """

    def __init__(self, head: FaramirHead, max_rows: int):
        cfg = head.cfg
        self.head = head.eval()
        self.dims = (cfg.backbone_dim, cfg.aesthetic_dim, cfg.quality_dim)
        self.norms = (head.norm.ap_norm, head.norm.ae_norm, head.norm.q_norm)
        self.x = torch.empty(max_rows, cfg.head_in_dim)  # (rows, 1296): normalised cat(ap, ae, q)

    @torch.inference_mode()
    def outputs(self, ap: np.ndarray, ae: np.ndarray, q: np.ndarray) -> torch.Tensor:
        """(N, 31) float32 logits cat(v, d) for (N, D), (N, 16), (N, 128) float32 arrays."""
        n = len(ap)
        assert n <= len(self.x), f"batch of {n} rows exceeds the scorer's {len(self.x)}"
        x = self.x[:n]
        lo = 0
        for values, dim, norm in zip((ap, ae, q), self.dims, self.norms):
            part = x[:, lo:lo + dim]
            torch.sub(_tensor(values), norm.mean, out=part)  # ChannelNorm: (x - mean) / stddev
            part.div_(norm.stddev)
            lo += dim
        h = self.head.head  # ClassifierHead.gates and forward, in eval mode, from the cat onwards
        hidden = h.activation_1(h.linear_1(x))  # (N, 64)
        gated, f = torch.tensor_split(h.linear_2(hidden), (2 * N_CLASSES,), dim=-1)
        r, g = torch.tensor_split(gated, 2, dim=-1)
        v = r * g.sigmoid()  # (N, 30)
        return torch.cat((v, h.decide(v, r, f)), dim=-1)

    def score_arrays(self, ap, ae, q) -> dict[str, pa.Array]:
        """The five score columns (unprefixed names), as `score_arrays` gives them."""
        out = self.outputs(ap, ae, q)
        v, d = out[:, :N_CLASSES], out[:, N_CLASSES]
        accept = v[:, :N_ACCEPT].argmax(dim=1).numpy()
        reject = N_ACCEPT + v[:, N_ACCEPT:].argmax(dim=1).numpy()
        return {
            "decision": pa.array(d.numpy(), pa.float32()),
            "confidence": pa.array(d.sigmoid().numpy(), pa.float32()),
            "accept_label": _LABEL_ARRAY.take(pa.array(accept)),
            "reject_label": _LABEL_ARRAY.take(pa.array(reject)),
            "logits": pa.FixedSizeListArray.from_arrays(pa.array(v.contiguous().numpy().reshape(-1)), N_CLASSES),
        }


_LABEL_ARRAY = pa.array(LABELS, pa.string())


def _tensor(values: np.ndarray) -> torch.Tensor:
    """A read-only Arrow-backed array as a tensor without a copy (it is only ever read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": never written here
        return torch.from_numpy(values)
