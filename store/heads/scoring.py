"""Stage-two arithmetic: a head over cached vectors → the six score columns of one head.

The head's own entry points do the work (`FaramirHead.forward_norm`, `forward_scores`), so cached
scores, rescored scores and `faramir assess` run the same code. A head whose frozen part equals a
registered head's needs only its decision layers over that head's cached v and f
(`decision_scores`, `FaramirHead.forward_decision`). This module needs torch: only ingest and
rescore import it, never a query.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import torch

from faramir.config import LABELS, N_CLASSES
from faramir.head import FaramirHead, side_labels
from faramir.store.schema import HeadColumns, vectors

_LABEL_ARRAY = pa.array(LABELS, pa.string())


def head_inputs(rows: pa.Table | pa.RecordBatch, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ap, ae, q): the three head inputs (`faramir.store.schema.HEAD_INPUTS`) of these rows as arrays."""
    return (vectors(rows.column("faramir_embedding"), cfg.backbone_dim),
            vectors(rows.column("aesthetic_features"), cfg.aesthetic_dim),
            vectors(rows.column("quality_features"), cfg.quality_dim))


def fixed_size_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """A (N, D) array as a fixed_size_list<float32>[D] column."""
    values = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


@torch.inference_mode()
def head_outputs(head: FaramirHead, ap: np.ndarray, ae: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N, 31) float32 logits cat(v, d) by the head's plain forward, as `faramir assess` runs it."""
    return head(_tensor(ap), _tensor(ae), _tensor(q)).numpy()


def score_arrays(v: torch.Tensor, d: torch.Tensor, f: torch.Tensor) -> dict[str, pa.Array]:
    """The six score columns (unprefixed names) from gated logits v (N, 30), decision logits
    d (N, 1) and free units f (N, 2)."""
    accept, reject = side_labels(v)
    return {
        **decision_arrays(d),
        "accept_label": _LABEL_ARRAY.take(pa.array(accept.numpy())),
        "reject_label": _LABEL_ARRAY.take(pa.array(reject.numpy())),
        "logits": fixed_size_list(v.numpy()),
        "free": fixed_size_list(f.numpy()),
    }


def decision_arrays(d: torch.Tensor) -> dict[str, pa.Array]:
    """The decision and confidence columns from decision logits d (N, 1)."""
    d = d.reshape(-1)
    return {"decision": pa.array(d.numpy(), pa.float32()),
            "confidence": pa.array(d.sigmoid().numpy(), pa.float32())}  # torch's sigmoid, as assess uses


@torch.inference_mode()
def decision_scores(head: FaramirHead, logits: pa.Array, free: pa.Array) -> dict[str, pa.Array]:
    """The decision and confidence columns of `head` from another head's logits and free columns,
    for heads whose frozen parts are equal, so that their v and f, and the labels (functions of v),
    are too: only the decision layers run."""
    return decision_arrays(head.forward_decision(_tensor(vectors(logits, N_CLASSES)),
                                                 _tensor(vectors(free, head.cfg.n_free))))


class HeadScorer:
    """A head over many cached rows, batch after batch, for ingest and rescore.

    It owns one buffer for the head's normalised, concatenated input and hands it to
    `FaramirHead.forward_norm` for every batch: at a million rows the per-batch allocations of
    the plain forward (three normalised copies, then their concatenation, each page-faulted in
    fresh) cost about as much as the matmul itself. The numbers are the plain forward's.
    """

    def __init__(self, head: FaramirHead, max_rows: int):
        self.head = head.eval()
        self.x = torch.empty(max_rows, head.cfg.head_in_dim)  # (rows, 1296): normalised cat(ap, ae, q)

    @torch.inference_mode()
    def outputs(self, ap: np.ndarray, ae: np.ndarray, q: np.ndarray):
        """(v (N, 30), d (N, 1), f (N, 2)) for (N, D), (N, 16), (N, 128) float32 arrays."""
        n = len(ap)
        if n > len(self.x):
            self.x = torch.empty(n, self.x.shape[1])
        x = self.head.forward_norm(_tensor(ap), _tensor(ae), _tensor(q), out=self.x[:n])
        return self.head.forward_scores(x)

    def score_arrays(self, ap, ae, q) -> dict[str, pa.Array]:
        """The six score columns (unprefixed names) for these rows."""
        return score_arrays(*self.outputs(ap, ae, q))

    def score_columns(self, cols: HeadColumns, ap, ae, q) -> dict[str, pa.Array]:
        """{column name: values}: the six score columns, named as `cols` places them."""
        return {cols.column(k): v for k, v in self.score_arrays(ap, ae, q).items()}


def score_columns(cols: HeadColumns, head: FaramirHead, ap, ae, q) -> dict[str, pa.Array]:
    """{column name: values} of one head over (N, D), (N, 16), (N, 128) float32 arrays."""
    return HeadScorer(head, len(ap)).score_columns(cols, ap, ae, q)


def _tensor(values: np.ndarray) -> torch.Tensor:
    """An array as a tensor without a copy; a read-only (Arrow-backed) one is only ever read here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": never written here
        return torch.from_numpy(values)
