"""Fitting a layout: UMAP (`umap-learn`, the `map` extra) on a sample of one embedding column.

The sample's embeddings are made unit length (the cosine geometry every search here uses),
centred and projected on their first principal axes (at most `COMPONENTS`), where UMAP finds
neighbours with the euclidean distance: a few dozen numbers a row instead of 1,152, which is
what makes fitting tens of thousands of rows minutes, not hours, and placing a million rows
afterwards cheap (`faramir.store.map.placing`). UMAP runs seeded, so a fit is reproducible (and
runs on one core: umap-learn's parallel mode is not deterministic).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from faramir.store.errors import MapError
from faramir.store.map.model import LayoutModel

COMPONENTS = 50  # principal axes kept
NEIGHBOURS = 15  # UMAP's n_neighbors
MIN_DIST = 0.1  # UMAP's min_dist
INSTALL = "faramir map needs umap-learn (the 'map' extra): pip install 'faramir[map]'"


def require_umap() -> None:
    """Raise MapError saying how to install umap-learn unless it can be imported."""
    try:
        import umap  # noqa: F401
    except ImportError:
        raise MapError(INSTALL) from None


def principal_axes(unit: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), axes (P, D)) of unit-length rows (S, D), the largest variance first, each axis's
    sign fixed (its largest entry positive) so that a fit is reproducible."""
    mean = unit.mean(0)
    x = (unit - mean).astype(np.float64)
    values, vectors = np.linalg.eigh(x.T @ x)  # (D,), (D, D): ascending
    axes = vectors[:, ::-1][:, :components].T  # (P, D)
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
    return mean.astype(np.float32), (axes * signs[:, None]).astype(np.float32)


def fit(vectors: np.ndarray, embedding: str, seed: int = 0, neighbours: int = NEIGHBOURS) -> LayoutModel:
    """A layout fitted on the sample `vectors` (S, D) of the `embedding` column."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    mean, axes = principal_axes(unit, max(1, min(COMPONENTS, len(unit) - 1, unit.shape[1])))
    reference = (unit - mean) @ axes.T  # (S, P)
    k = max(1, min(neighbours, len(unit) - 1))
    if len(unit) <= 4:  # too few rows for a neighbour graph: the two main axes are the layout
        coords = np.zeros((len(unit), 2), np.float32)
        coords[:, :min(2, reference.shape[1])] = reference[:, :2]
        a, b = 1.577, 0.895  # UMAP's curve for min_dist 0.1
    else:
        require_umap()
        import umap

        reducer = umap.UMAP(n_neighbors=k, min_dist=MIN_DIST, n_components=2, metric="euclidean",
                            random_state=seed, transform_seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden to 1 by setting random_state", spectral fallbacks
            coords = reducer.fit_transform(reference).astype(np.float32)
        a, b = float(reducer._a), float(reducer._b)
    return LayoutModel(fit=time.time_ns(), embedding=embedding, mean=mean, components=axes, reference=reference,
                       coords=coords, a=a, b=b, neighbours=k, seed=seed)
