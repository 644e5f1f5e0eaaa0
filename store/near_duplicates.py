"""Near-duplicates: groups of cached images whose embeddings have cosine similarity ≥ S, and
exact duplicates (one content seen at several paths).

Threshold: two images are near-duplicates when the cosine similarity of their embeddings (stock
SigLIP by default, or FARAMIR's) is at least S; a group is a connected component of that
relation, so two members of one group may be less similar to each other than S (each is within
S of some other member). Every edge is verified by the exact cosine (float64 from the stored
float32 vectors); the candidate search only decides which pairs get verified.

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
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store.db import Cache
from store.heads import open_cache
from store.query import QueryError, _embedding_column, _retrying, _score_columns, make_filter, results

DEFAULT_THRESHOLD = 0.95
KEEPS = ("confidence", "aesthetic", "largest")
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
FACT_COLUMNS = ["width", "height", "size"]


@dataclass
class DuplicateGroups:
    """Groups (`table`: one row per content, keeper first in each group) and how they were found."""

    table: pa.Table  # group, keeper, similarity, id, path, confidence, ... , paths, width, height, size
    threshold: float
    embedding: str
    rows: int = 0  # rows searched (those passing the filters)
    groups: int = 0
    candidates: int = 0  # pairs whose exact cosine was computed
    edges: int = 0  # pairs at cosine ≥ threshold
    cut: int = 0  # rows with more cells in reach than MAX_PROBES (a pair through them may be missed)


def duplicates(
    db: str | os.PathLike | Cache | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    embedding: str = "siglip",
    keep: str = "confidence",
    confidence_threshold: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    **filters,
) -> DuplicateGroups:
    """Groups of near-duplicate images among the rows passing the filters (see `Filter`): connected
    components of "embedding cosine ≥ `threshold`", plus every content cached under several paths
    (exact copies; similarity 1). Each group names its keeper (`keep`: highest confidence under the
    filter's head, highest aesthetic score, or largest in pixels then bytes) and gives each member's
    cosine similarity to it. `confidence_threshold` is the filters' `threshold` (accepted iff
    confidence > it), renamed so as not to clash with the similarity `threshold`.
    `progress(rows read, rows)` while reading the vectors."""
    if not 0.0 < threshold <= 1.0:
        raise QueryError(f"threshold {threshold}: must be above 0 and at most 1 (a cosine similarity)")
    if keep not in KEEPS:
        raise QueryError(f"keep {keep!r}: use one of {', '.join(KEEPS)}")
    column = _embedding_column(embedding)
    cache = open_cache(db)
    f = make_filter({**filters, "threshold": confidence_threshold})

    def run(prefix: str, ds) -> DuplicateGroups:
        found = DuplicateGroups(pa.table({}), threshold, embedding)
        where = f.where(prefix)
        offsets, multi_path, edges = _edges(ds, column, where, threshold, found, progress)
        members = _components(len(offsets), edges, multi_path)
        found.table = _group_table(ds, prefix, f.threshold, column, offsets, members, keep)
        found.groups = len(members)
        return found

    return _retrying(cache, f.head, run)


# -- candidate pairs and their verification --------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _vectors(table: pa.Table, column: str) -> np.ndarray:
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
        return (_unit(x) - self.mean) @ self.axes

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
    x = _unit(_vectors(ds.take(sample, columns=[column]), column))
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
    y = np.concatenate([part.project(_vectors(ds.take(sample[lo:lo + READ_BATCH], columns=[column]), column))
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


def _edges(ds, column: str, where: str, threshold: float, found: DuplicateGroups, progress):
    """(row offsets of the rows searched, their indices with several paths, verified edges (i, j)
    as indices into the offsets)."""
    n = ds.count_rows(filter=where)
    found.rows = n
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    dim = ds.schema.field(column).type.list_size
    part = _partition(ds, column, n, dim)
    bound2 = 2.0 * (1.0 - threshold) + MARGIN  # squared distance of unit vectors at cosine = threshold
    y = np.empty((n, part.axes.shape[1]), np.float32)
    offsets = np.empty(n, np.int64)
    home = np.empty(n, np.int64)
    multi, probe_rows, probe_cells = [], [], []
    done = 0
    for batch in ds.to_batches(columns=[column, "paths", "_rowoffset"], filter=where, batch_size=READ_BATCH):
        m = batch.num_rows
        if m == 0:
            continue
        rows = slice(done, done + m)
        y[rows] = part.project(_vectors(pa.table(batch), column))
        offsets[rows] = batch.column("_rowoffset").to_numpy()
        lengths = pc.list_value_length(batch.column("paths")).to_numpy(zero_copy_only=False)
        multi.append(done + np.nonzero(lengths > 1)[0])
        h, pr, pc_, cut = part.assign(y[rows], bound2)
        home[rows] = h
        probe_rows.append(done + pr)
        probe_cells.append(pc_)
        found.cut += cut
        done += m
        if progress is not None:
            progress(done, n)
    assert done == n, f"read {done} rows of {n}"
    pairs = _candidate_pairs(y, home, np.concatenate(probe_rows), np.concatenate(probe_cells),
                             len(part.centroids), bound2)
    del y
    found.candidates = len(pairs)
    edges = _verify(ds, column, offsets, pairs, threshold)
    found.edges = len(edges)
    return offsets, np.concatenate(multi), edges


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
        x = _vectors(ds.take(offsets[rows], columns=[column]), column).astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cos = np.einsum("ij,ij->i", x[inverse[:, 0]], x[inverse[:, 1]])
        kept.append(chunk[cos >= threshold])
        start = stop
    return np.concatenate(kept)


# -- groups ---------------------------------------------------------------------------------------


def _components(n: int, edges: np.ndarray, multi_path: np.ndarray) -> list[np.ndarray]:
    """Connected components (row indices) of two or more rows, and single rows with several paths."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    involved = np.unique(np.concatenate([edges.reshape(-1), multi_path]))
    roots = np.array([root(int(i)) for i in involved], np.int64)
    order = np.argsort(roots, kind="stable")
    involved, roots = involved[order], roots[order]
    cuts = np.nonzero(np.diff(roots))[0] + 1
    return [g for g in np.split(involved, cuts) if len(g)]


def _group_table(ds, prefix: str, threshold: float, column: str, offsets: np.ndarray,
                 members: list[np.ndarray], keep: str) -> pa.Table:
    """The result rows: each group's keeper first, then its members by similarity to it."""
    columns = ["id", "paths", "aesthetic_score", *_score_columns(prefix), *FACT_COLUMNS]
    if not members:
        empty = ds.take(np.zeros(0, np.int64), columns=columns)
        return _with_group(results(empty, prefix, threshold, extra=FACT_COLUMNS), [], [], [])
    flat = np.concatenate(members)
    group_of = np.concatenate([np.full(len(g), n) for n, g in enumerate(members)])
    rows = ds.take(offsets[flat], columns=columns)
    keepers = _keepers(rows, prefix, group_of, len(members), keep)
    similarity = _similarity_to_keeper(ds, column, offsets[flat], group_of, keepers)
    n_paths = pc.list_value_length(rows.column("paths")).to_numpy(zero_copy_only=False)
    size = np.bincount(group_of, minlength=len(members))
    copies = np.bincount(group_of, weights=n_paths, minlength=len(members))
    ids = np.asarray(rows.column("id").to_pylist(), dtype=object)
    # Groups: most contents first, then most paths, then the keeper's id; in a group the keeper,
    # then by similarity to it, then by id.
    rank = np.lexsort((ids[keepers], -copies, -size))
    group_number = np.empty(len(members), np.int64)
    group_number[rank] = np.arange(1, len(members) + 1)
    is_keeper = np.zeros(len(flat), bool)
    is_keeper[keepers] = True
    order = np.lexsort((ids.astype(str), -similarity, ~is_keeper, group_number[group_of]))
    table = results(rows.take(pa.array(order)), prefix, threshold, extra=FACT_COLUMNS)
    return _with_group(table, group_number[group_of][order], is_keeper[order], similarity[order])


def _with_group(table: pa.Table, group, keeper, similarity) -> pa.Table:
    for position, (name, values, kind) in enumerate((
        ("group", group, pa.int64()), ("keeper", keeper, pa.bool_()), ("similarity", similarity, pa.float64()),
    )):
        table = table.add_column(position, name, pa.array(np.asarray(values), kind))
    return table


def _keepers(rows: pa.Table, prefix: str, group_of: np.ndarray, groups: int, keep: str) -> np.ndarray:
    """Row index (into `rows`) of each group's keeper: the best by `keep`, ties broken by the
    decision logit (confidence saturates at 1 in float32), then the smallest id."""
    decision = rows.column(f"{prefix}_decision").to_numpy(zero_copy_only=False).astype(np.float64)
    if keep == "confidence":
        keys = [decision]
    elif keep == "aesthetic":
        keys = [rows.column("aesthetic_score").to_numpy(zero_copy_only=False).astype(np.float64), decision]
    else:
        pixels = (rows.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
                  * rows.column("height").to_numpy(zero_copy_only=False))
        keys = [pixels, rows.column("size").to_numpy(zero_copy_only=False).astype(np.float64), decision]
    ids = np.asarray(rows.column("id").to_pylist(), dtype=str)
    # lexsort: last key first; best = largest keys, then smallest id; group ascending.
    order = np.lexsort([ids] + [-np.nan_to_num(k, nan=-np.inf) for k in reversed(keys)] + [group_of])
    first = np.ones(len(order), bool)
    first[1:] = group_of[order][1:] != group_of[order][:-1]
    best = order[first]
    assert len(best) == groups
    return best


def _similarity_to_keeper(ds, column: str, offsets: np.ndarray, group_of: np.ndarray,
                          keepers: np.ndarray) -> np.ndarray:
    """Exact cosine (float64) of each member's embedding to its group keeper's (1 for the keeper)."""
    keeper_x = _unit(_vectors(ds.take(offsets[keepers], columns=[column]), column).astype(np.float64))
    similarity = np.empty(len(offsets))
    for lo in range(0, len(offsets), VERIFY_ROWS):
        hi = min(len(offsets), lo + VERIFY_ROWS)
        x = _unit(_vectors(ds.take(offsets[lo:hi], columns=[column]), column).astype(np.float64))
        similarity[lo:hi] = np.einsum("ij,ij->i", x, keeper_x[group_of[lo:hi]])
    similarity[keepers] = 1.0
    return similarity
