"""Placing rows on a fitted layout without refitting it: UMAP's transform, vectorised.

For each new row, as `umap.UMAP.transform` does: its `neighbours` nearest rows of the fitted
sample (exact, in the model's space: one matrix product and a top-k per batch, in torch, which
both cores share), their membership strengths (each row's bandwidth σ found by bisection so
that Σ exp(−d/σ) = log2 k), a start at the strength-weighted mean of their positions, then
epochs of UMAP's attractive pull towards them and a (lighter) repulsive push from random sample
rows, with the learning rate falling to 0. The sample stays where the fit put it; new rows never move each
other, so a row's place does not depend on which others are placed with it (only the random
repulsions do, drawn from a generator seeded by the model's seed).

Where umap-learn samples edges and negatives one at a time (numba), this applies every edge's
expected pull and a few pushes a row per epoch as array operations: numpy only, so an ingest
places its new rows without importing umap-learn (or compiling anything).
"""

from __future__ import annotations

import math

import numpy as np

from faramir.store.map.model import LayoutModel

KNN_BATCH = 2048  # rows whose distances to the whole sample are held at once (2048 × 50K × 4 bytes)
NEGATIVES = 5  # random sample rows pushed from, a row and epoch
REPULSION = 0.2  # the weight of each: a fifth of UMAP's five pushes per edge. Summed as arrays rather
# than applied one by one, UMAP's full weight flung rows out of tight clusters along the diagonals
# its per-coordinate clip allows (on bench.synthetic's rows: placed rows of the fitted sample landed
# a median 0.24 from their neighbours' centre, against 0.04 here and 0.05 for the start alone)
LEARNING_RATE = 0.25  # UMAP's transform: its learning rate (1.0) / 4
SMALL = 10_000  # UMAP's transform runs 100 epochs up to this many rows, else 30


def neighbours(model: LayoutModel, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, k), euclidean distances (N, k)) of the `k` nearest sample rows to each of the
    projected rows `x` (N, P), nearest first."""
    import torch

    ref = torch.from_numpy(np.ascontiguousarray(model.reference, np.float32))  # (S, P)
    ref2 = (ref * ref).sum(1)  # (S,)
    idx, dist = [], []
    with torch.inference_mode():
        for i in range(0, len(x), KNN_BATCH):
            q = torch.from_numpy(np.ascontiguousarray(x[i:i + KNN_BATCH], np.float32))  # (B, P)
            d2 = torch.addmm(ref2[None, :], q, ref.T, alpha=-2.0)  # (B, S): |r|² − 2 q·r
            d2, j = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            d2 += (q * q).sum(1, keepdim=True)
            idx.append(j.numpy())
            dist.append(d2.clamp_min(0).sqrt().numpy())
    return np.concatenate(idx), np.concatenate(dist)


def memberships(dist: np.ndarray) -> np.ndarray:
    """(N, k) membership strengths exp(−d/σ) of each row's neighbours, σ per row by bisection so
    that the strengths beyond the nearest sum to log2 k (umap's smooth_knn_dist for a transform:
    local connectivity 0, so no distance is subtracted)."""
    n, k = dist.shape
    target = math.log2(k)
    d = dist.astype(np.float64)
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    for _ in range(64):
        total = np.where(d[:, 1:] > 0, np.exp(-d[:, 1:] / mid[:, None]), 1.0).sum(1)
        above = total > target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2, (lo + hi) / 2)
    mid = np.maximum(mid, 1e-3 * d.mean(1) + 1e-12)  # umap's MIN_K_DIST_SCALE floor
    return np.where(d > 0, np.exp(-d / mid[:, None]), 1.0)


def place(model: LayoutModel, vectors: np.ndarray, epochs: int | None = None) -> np.ndarray:
    """(N, 2) float32 positions for (N, D) embeddings on the layout of `model`."""
    if len(vectors) == 0:
        return np.zeros((0, 2), np.float32)
    coords = model.coords.astype(np.float64)  # (S, 2)
    k = min(model.neighbours, len(coords))
    idx, dist = neighbours(model, model.project(vectors), k)
    w = memberships(dist)  # (N, k)
    y = (w[:, :, None] * coords[idx]).sum(1) / w.sum(1, keepdims=True)  # the weighted mean: (N, 2)
    if len(coords) < 2:
        return y.astype(np.float32)
    epochs = epochs if epochs is not None else (100 if len(vectors) <= SMALL else 30)
    w = np.where(w < w.max() / epochs, 0.0, w)  # edges too weak to be sampled in `epochs`
    rate = w / w.max()  # each edge's expected samples per epoch
    pushes = REPULSION * rate.sum(1, keepdims=True)  # a push per edge sampled, where UMAP pushes five times
    rng = np.random.default_rng(model.seed)
    a, b = model.a, model.b
    for epoch in range(epochs):
        alpha = LEARNING_RATE * (1.0 - epoch / epochs)
        diff = y[:, None, :] - coords[idx]  # (N, k, 2)
        d2 = (diff * diff).sum(2)
        pull = np.where(d2 > 0, -2.0 * a * b * np.power(d2, b - 1.0, where=d2 > 0, out=np.ones_like(d2))
                        / (a * np.power(d2, b) + 1.0), 0.0)
        y += alpha * (rate[:, :, None] * np.clip(pull[:, :, None] * diff, -4, 4)).sum(1)
        other = coords[rng.integers(0, len(coords), (len(y), NEGATIVES))]  # (N, 5, 2)
        diff = y[:, None, :] - other
        d2 = (diff * diff).sum(2)
        push = np.where(d2 > 0, 2.0 * b / ((0.001 + d2) * (a * np.power(d2, b) + 1.0)), 0.0)
        y += alpha * pushes * np.clip(push[:, :, None] * diff, -4, 4).sum(1)
    return y.astype(np.float32)
