"""Pairs of cached rows whose embeddings have cosine similarity ≥ S, found in one pass over all
rows: the candidate search of `faramir.store.near_duplicates.groups`.

Candidate search, an inverted-file (IVF) pass over all rows at once: LanceDB's ANN index answers
one query in milliseconds, so a query per row would take hours at a million rows. Instead:

1. Unit-normalise every vector and project it onto the top `PROJECTED_DIM` principal axes of a
   sample (orthonormal, so the projected distance between two rows is never larger than their
   true distance: for unit vectors, cos ≥ S ⟺ distance² ≤ 2(1 − S)).
2. Partition the projected rows by k-means centroids trained on the sample (about
   `ROWS_PER_CELL` rows a cell). A row lies in its nearest centroid's cell and also probes the
   other cells that could hold a row within the distance bound of it (their bisecting hyperplane
   with its home is within the bound), nearest bisector first, at most `MAX_PROBES`: as an ANN
   index's nprobes, this is where the search is approximate. Rows that had more such cells are
   counted (`cut`).
3. In each cell, pairs of members and of (prober, member) whose projected distance is within the
   bound (plus a float32 margin) are candidates; their exact cosine decides.

Near-duplicates sit far closer to each other than to their cell's boundaries: on the clustered
synthetic rows of `bench/duplicates.py` 97% of planted pairs share a cell and every one is within
its partner's three nearest cells. Memory: the projected rows (N × 128 float32, 512 MB at a
million rows) and the candidate pairs; full vectors are read in batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PROJECTED_DIM = 128  # principal axes kept for the candidate search (exact when D ≤ this)
ROWS_PER_CELL = 256  # IVF cell size aimed at (cost ∝ N × cell size × probes)
MAX_PROBES = 4  # other cells a row may probe (an ANN index's nprobes, less its own cell)
PCA_ROWS = 16_384  # rows sampled for the principal axes
KMEANS_ROWS = 65_536  # rows sampled for the centroids (at least 16 a centroid)
KMEANS_ITERATIONS = 10
READ_BATCH = 8192  # rows per batch read (38 MB of 1152-d float32)
TILE = 2048  # rows per side of one distance tile
VERIFY_ROWS = 32_768  # full vectors held at once while verifying
MARGIN = 1e-4  # added to squared-distance bounds: float32 rounding of the projected distances
SEED = 0


@dataclass
class ClosePairs:
    """The rows searched (by row offset), and which of them pair up."""

    offsets: np.ndarray  # (N,) row offsets in the dataset version searched
    multi_path: np.ndarray  # indices (into offsets) of rows cached under several paths
    edges: np.ndarray  # (E, 2) indices (into offsets) of pairs at cosine ≥ threshold, i < j
    candidates: int = 0  # pairs whose exact cosine was computed
    cut: int = 0  # rows with more cells in reach than MAX_PROBES (a pair through them may be missed)


def unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def vectors(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column).combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32, copy=False)


@dataclass
class _Partition:
    """The projection and the cells: y = (x̂ − mean) @ axes; cells around `centroids`."""

    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (D, r) orthonormal columns
    centroids: np.ndarray  # (C, r)
    gaps: np.ndarray  # (C, C) distances between centroids

    def project(self, x: np.ndarray) -> np.ndarray:
        return (unit_rows(x) - self.mean) @ self.axes

    def assign(self, y: np.ndarray, bound2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(home cell of each row, probing row indices, probed cells, rows whose probes were cut):
        among a row's nearest 2 × MAX_PROBES + 1 centroids, the other cells whose bisector with
        its home lies within the bound, nearest bisector first, at most MAX_PROBES."""
        import torch

        n, cells = len(y), len(self.centroids)
        yt = torch.from_numpy(y)
        d2 = _augmented(yt, left=True) @ _augmented(torch.from_numpy(self.centroids), left=False).T  # (n, C)
        near = min(cells, 2 * MAX_PROBES + 1)
        d2, cand = torch.topk(d2, near, dim=1, largest=False)  # nearest centroids, nearest first
        home = cand[:, 0]
        if cells == 1:
            return home.numpy(), np.zeros(0, np.int64), np.zeros(0, np.int64), 0
        gap = torch.from_numpy(self.gaps)[home[:, None], cand[:, 1:]]  # (n, near − 1)
        reach = (d2[:, 1:] - d2[:, :1]) / (2.0 * gap.clamp_min(1e-12))  # distance to each bisector
        reach[reach > math.sqrt(bound2)] = math.inf
        reach, order = torch.sort(reach, dim=1)
        cand = cand[:, 1:].gather(1, order)
        cut = int(torch.isfinite(reach[:, MAX_PROBES]).sum()) if reach.shape[1] > MAX_PROBES else 0
        reach, cand = reach[:, :MAX_PROBES], cand[:, :MAX_PROBES]
        keep = torch.isfinite(reach)
        rows = torch.arange(n)[:, None].expand_as(keep)
        return home.numpy(), rows[keep].numpy(), cand[keep].numpy(), cut


def _augmented(y, left: bool):
    """Rows extended so that one matrix product gives squared distances:
    [y, |y|², 1] · [−2z, 1, |z|²] = |y − z|²."""
    import torch

    norms = (y * y).sum(1, keepdim=True)
    ones = torch.ones_like(norms)
    return torch.cat([y, norms, ones] if left else [-2.0 * y, ones, norms], dim=1)


def _partition(ds, column: str, n_rows: int, dim: int) -> _Partition:
    """Principal axes from a sample of the whole table, and k-means centroids from a larger one."""
    rng = np.random.default_rng(SEED)
    total = ds.count_rows()
    sample = np.sort(rng.choice(total, min(total, PCA_ROWS), replace=False))
    x = unit_rows(vectors(ds.take(sample, columns=[column]), column))
    mean = x.mean(0, dtype=np.float64).astype(np.float32)
    x -= mean
    if dim <= PROJECTED_DIM:
        axes = np.eye(dim, dtype=np.float32)
    else:
        _, vecs = np.linalg.eigh((x.T @ x).astype(np.float64))
        axes = np.ascontiguousarray(vecs[:, ::-1][:, :PROJECTED_DIM], np.float32)  # largest first
    del x
    part = _Partition(mean, axes, np.zeros((0, axes.shape[1]), np.float32), np.zeros((0, 0), np.float32))
    cells = max(1, n_rows // ROWS_PER_CELL)
    sample = np.sort(rng.choice(total, min(total, max(KMEANS_ROWS, 16 * cells)), replace=False))
    y = np.concatenate([part.project(vectors(ds.take(sample[lo:lo + READ_BATCH], columns=[column]), column))
                        for lo in range(0, len(sample), READ_BATCH)])
    part.centroids = _kmeans(y, min(cells, len(y)), rng)
    c = part.centroids
    norms = (c * c).sum(1)
    part.gaps = np.sqrt(np.maximum(norms[:, None] + norms[None, :] - 2.0 * (c @ c.T), 0.0))
    return part


def _kmeans(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centroids = y[rng.choice(len(y), k, replace=False)].copy()
    if k == 1:
        return y.mean(0, keepdims=True)
    for _ in range(KMEANS_ITERATIONS):
        nearest = np.concatenate([  # in chunks: 8192 × 4000 cells is 128 MB
            np.argmin((centroids ** 2).sum(1)[None, :] - 2.0 * (y[lo:lo + READ_BATCH] @ centroids.T), axis=1)
            for lo in range(0, len(y), READ_BATCH)])
        order = np.argsort(nearest, kind="stable")
        counts = np.bincount(nearest, minlength=k)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        filled = counts > 0
        sums = np.add.reduceat(y[order], starts[filled], axis=0)
        centroids[filled] = sums / counts[filled][:, None]  # an empty cell keeps its centroid
    return centroids


def close_pairs(ds, column: str, where: str, threshold: float,
                progress: Callable[[int, int], None] | None = None) -> ClosePairs:
    """The rows of `ds` passing `where` (SQL), and the pairs among them whose `column` vectors have
    cosine ≥ `threshold`. `progress(rows read, rows)` while reading the vectors."""
    n = ds.count_rows(filter=where)
    if n == 0:
        return ClosePairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.int64))
    part = _partition(ds, column, n, ds.schema.field(column).type.list_size)
    bound2 = 2.0 * (1.0 - threshold) + MARGIN  # squared distance of unit vectors at cosine = threshold
    y = np.empty((n, part.axes.shape[1]), np.float32)
    offsets, home = np.empty(n, np.int64), np.empty(n, np.int64)
    multi, probe_rows, probe_cells, cut, done = [], [], [], 0, 0
    for batch in ds.to_batches(columns=[column, "paths", "_rowoffset"], filter=where, batch_size=READ_BATCH):
        m = batch.num_rows
        if m == 0:
            continue
        rows = slice(done, done + m)
        y[rows] = part.project(vectors(pa.table(batch), column))
        offsets[rows] = batch.column("_rowoffset").to_numpy()
        lengths = pc.list_value_length(batch.column("paths")).to_numpy(zero_copy_only=False)
        multi.append(done + np.nonzero(lengths > 1)[0])
        home[rows], probing, probed, cut_here = part.assign(y[rows], bound2)
        probe_rows.append(done + probing)
        probe_cells.append(probed)
        cut += cut_here
        done += m
        if progress is not None:
            progress(done, n)
    assert done == n, f"read {done} rows of {n}"
    pairs = _candidate_pairs(y, home, np.concatenate(probe_rows), np.concatenate(probe_cells),
                             len(part.centroids), bound2)
    del y
    edges = _verify(ds, column, offsets, pairs, threshold)
    return ClosePairs(offsets, np.concatenate(multi), edges, candidates=len(pairs), cut=cut)


def _candidate_pairs(y, home, probe_rows, probe_cells, cells: int, bound2: float) -> np.ndarray:
    """Distinct pairs (i < j) whose projected squared distance is within `bound2`: members of one
    cell among themselves, and each cell's probers against its members."""
    import torch

    order = np.argsort(home, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(home, minlength=cells))])
    by_cell = np.argsort(probe_cells, kind="stable")
    probe_rows, probe_cells = probe_rows[by_cell], probe_cells[by_cell]
    probe_starts = np.searchsorted(probe_cells, np.arange(cells + 1))
    yt = torch.from_numpy(y)
    found: list[np.ndarray] = []
    for c in range(cells):
        members = order[starts[c]:starts[c + 1]]
        if len(members):
            _cell_pairs(yt, members, probe_rows[probe_starts[c]:probe_starts[c + 1]], bound2, found)
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def _cell_pairs(yt, members: np.ndarray, probers: np.ndarray, bound2: float, found: list) -> None:
    """Append the pairs of one cell within `bound2`: member × later member, prober × member."""
    import torch

    right = _augmented(yt[torch.from_numpy(members)], left=False)  # (m, r + 2)

    def tile(rows: np.ndarray, lo: int, diagonal: bool) -> None:
        d2 = _augmented(yt[torch.from_numpy(rows)], left=True) @ right[lo:lo + TILE].T
        hit = d2 <= bound2
        if diagonal:
            hit.triu_(1)  # a member with itself or an earlier member: not a new pair
        if bool(hit.any()):
            ia, ib = (t.numpy() for t in hit.nonzero(as_tuple=True))
            found.append(np.stack([rows[ia], members[lo + ib]], axis=1))

    for lo in range(0, len(members), TILE):
        for blo in range(lo, len(members), TILE):
            tile(members[lo:lo + TILE], blo, diagonal=blo == lo)
    for lo in range(0, len(probers), TILE):
        for blo in range(0, len(members), TILE):
            tile(probers[lo:lo + TILE], blo, diagonal=False)


def _verify(ds, column: str, offsets: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """The pairs whose exact cosine (float64 over the stored vectors) is ≥ threshold."""
    kept = [np.zeros((0, 2), np.int64)]
    start = 0
    while start < len(pairs):  # chunks of pairs touching at most VERIFY_ROWS distinct rows
        stop = min(len(pairs), start + VERIFY_ROWS // 2)
        chunk = pairs[start:stop]
        rows, inverse = np.unique(chunk, return_inverse=True)
        inverse = inverse.reshape(chunk.shape)
        x = vectors(ds.take(offsets[rows], columns=[column]), column).astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cos = np.einsum("ij,ij->i", x[inverse[:, 0]], x[inverse[:, 1]])
        kept.append(chunk[cos >= threshold])
        start = stop
    return np.concatenate(kept)
