"""Near-duplicates: groups of cached images whose embeddings have cosine similarity ≥ S, and
exact duplicates (one content seen at several paths).

Threshold: two images are near-duplicates when the cosine similarity of their embeddings (stock
SigLIP by default, or FARAMIR's) is at least S; a group is a connected component of that
relation, so two members of one group may be less similar to each other than S (each is within
S of some other member). Every edge is verified by the exact cosine (float64 from the stored
float32 vectors); the candidate search only decides which pairs get verified.

The candidate search is `faramir.store.near_duplicates.close_pairs`: one inverted-file pass over all rows (principal axes,
k-means cells, a few probed cells per row), every candidate verified by its exact cosine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.filters import Filter
from faramir.store.heads.columns import on_head, read_columns, results
from faramir.store.near_duplicates import DEFAULT_SIMILARITY
from faramir.store.near_duplicates.close_pairs import VERIFY_ROWS, close_pairs, unit_rows, vectors
from faramir.store.schema import HeadColumns
from faramir.store.vectors.nearest import embedding_column

KEEPS = ("confidence", "aesthetic", "largest")
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
    threshold: float = DEFAULT_SIMILARITY,
    embedding: str = "siglip",
    keep: str = "confidence",
    progress: Callable[[int, int], None] | None = None,
    filter: Filter | None = None,
    **filters,
) -> DuplicateGroups:
    """Groups of near-duplicate images among the rows passing the filter (a `Filter`, or its
    fields as keyword arguments): connected components of "embedding cosine ≥ `threshold`", plus
    every content cached under several paths (exact copies; similarity 1). Each group names its
    keeper (`keep`: highest confidence under the filter's head, highest aesthetic score, or largest
    in pixels then bytes) and gives each member's cosine similarity to it. `threshold` here is the
    similarity; the filter's own (accept) threshold goes in a `Filter`. `progress(rows read, rows)`
    while reading the vectors."""
    if not 0.0 < threshold <= 1.0:
        raise QueryError(f"threshold {threshold}: must be above 0 and at most 1 (a cosine similarity)")
    if keep not in KEEPS:
        raise QueryError(f"keep {keep!r}: use one of {', '.join(KEEPS)}")
    column = embedding_column(embedding)
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)

    def run(cols: HeadColumns, ds) -> DuplicateGroups:
        pairs = close_pairs(ds, column, f.where(cols), threshold, progress)
        members = _components(len(pairs.offsets), pairs.edges, pairs.multi_path)
        table = _group_table(ds, cols, f.threshold, column, pairs.offsets, members, keep)
        return DuplicateGroups(table, threshold, embedding, rows=len(pairs.offsets), groups=len(members),
                               candidates=pairs.candidates, edges=len(pairs.edges), cut=pairs.cut)

    return on_head(cache, f.head, run)


def non_keepers(cache: Cache, f: Filter, threshold: float = DEFAULT_SIMILARITY, keep: str = "confidence") -> set[str]:
    """Ids of the near-duplicates that are not their group's keeper, among the rows passing `f`:
    what an export of one image per group leaves out."""
    table = duplicates(cache, threshold=threshold, keep=keep, filter=f).table
    return set(table.filter(pc.invert(table.column("keeper"))).column("id").to_pylist())


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


def _group_table(ds, cols: HeadColumns, threshold: float, column: str, offsets: np.ndarray,
                 members: list[np.ndarray], keep: str) -> pa.Table:
    """The result rows: each group's keeper first, then its members by similarity to it."""
    columns = [*read_columns(cols), *FACT_COLUMNS]
    if not members:
        empty = ds.take(np.zeros(0, np.int64), columns=columns)
        return _with_group(results(empty, cols, threshold, extra=FACT_COLUMNS), [], [], [])
    flat = np.concatenate(members)
    group_of = np.concatenate([np.full(len(g), n) for n, g in enumerate(members)])
    rows = ds.take(offsets[flat], columns=columns)
    keepers = _keepers(rows, cols, group_of, len(members), keep)
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
    table = results(rows.take(pa.array(order)), cols, threshold, extra=FACT_COLUMNS)
    return _with_group(table, group_number[group_of][order], is_keeper[order], similarity[order])


def _with_group(table: pa.Table, group, keeper, similarity) -> pa.Table:
    for position, (name, values, kind) in enumerate((
        ("group", group, pa.int64()), ("keeper", keeper, pa.bool_()), ("similarity", similarity, pa.float64()),
    )):
        table = table.add_column(position, name, pa.array(np.asarray(values), kind))
    return table


def _keepers(rows: pa.Table, cols: HeadColumns, group_of: np.ndarray, groups: int, keep: str) -> np.ndarray:
    """Row index (into `rows`) of each group's keeper: the best by `keep`, ties broken by the
    decision logit (confidence saturates at 1 in float32), then the smallest id."""
    decision = rows.column(cols.decision).to_numpy(zero_copy_only=False).astype(np.float64)
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
    keeper_x = unit_rows(vectors(ds.take(offsets[keepers], columns=[column]), column).astype(np.float64))
    similarity = np.empty(len(offsets))
    for lo in range(0, len(offsets), VERIFY_ROWS):
        hi = min(len(offsets), lo + VERIFY_ROWS)
        x = unit_rows(vectors(ds.take(offsets[lo:hi], columns=[column]), column).astype(np.float64))
        similarity[lo:hi] = np.einsum("ij,ij->i", x, keeper_x[group_of[lo:hi]])
    similarity[keepers] = 1.0
    return similarity
