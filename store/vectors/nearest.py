"""Nearest neighbours: the cached images closest to a reference by cosine distance of the FARAMIR
or the stock SigLIP embedding, among the rows passing a filter.

The reference is a cached image (by id or by a path the cache has seen), an image file whose
content is cached (found by its hash), or a vector. An image file the cache has never seen raises
`NotCached`: ingesting it is stage one's job (`faramir.store.ingest`), which the caller runs, then asks
again (the `faramir similar` command does).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from faramir.files import sha256_file
from faramir.store import limits, schema
from faramir.store.cache import Cache
from faramir.store.errors import NotCached, QueryError, UnknownImage
from faramir.store.filters import Filter
from faramir.store.heads.columns import on_head, read_columns, results
from faramir.store.queries.images import check_id
from faramir.store.schema import HeadColumns
from faramir.store.sql import sql_str

EMBEDDINGS = tuple(schema.EMBEDDING_COLUMNS)  # "faramir", "siglip"


def embedding_column(embedding: str) -> str:
    """The images column of embedding "faramir" or "siglip"."""
    if embedding not in schema.EMBEDDING_COLUMNS:
        raise QueryError(f"embedding {embedding!r}: use one of {', '.join(EMBEDDINGS)}")
    return schema.EMBEDDING_COLUMNS[embedding]


def reference_vector(cache: Cache, ref: str, embedding: str = "faramir") -> tuple[str, np.ndarray]:
    """(id, embedding) of REF: a cached image's id, a path the cache has seen (as the file system
    names it, or as the cache prints it: `faramir.store.schema.path_to_column`), or an image file whose
    content is cached under any path (found by its sha256). NotCached for an image file the cache
    has not seen; QueryError for anything else."""
    column = embedding_column(embedding)
    if schema.CONTENT_ID.match(ref.lower()):
        found = _vector_of(cache, ref.lower(), column)
        if found is not None:
            return ref.lower(), found
    if not ref.startswith(("http://", "https://")):
        path = os.path.abspath(os.path.expanduser(schema.path_from_column(ref)))  # a path as printed works too
        hit = cache.read(schema.FILES, ["id"], f"path = {sql_str(schema.path_to_column(path))}")
        if len(hit):
            content_id = hit.column("id")[0].as_py()
            found = _vector_of(cache, content_id, column)
            if found is not None:
                return content_id, found
        if os.path.isfile(path):
            digest = sha256_file(path)
            found = _vector_of(cache, digest, column)
            if found is None:
                raise NotCached(path, f"{ref}: not in the cache yet; cache it first with "
                                      f"'faramir ingest {ref} --db {cache.uri}'")
            return digest, found
    if schema.CONTENT_ID.match(ref.lower()):
        raise QueryError(f"{ref}: no cached image has this id in {cache.uri}")
    raise QueryError(f"{ref}: not a cached image's id or path, nor an image file here")


def _vector_of(cache: Cache, image_id: str, column: str) -> np.ndarray | None:
    rows = cache.dataset(schema.IMAGES).to_table(columns=[column], filter=f"id = {sql_str(image_id)}", limit=1)
    if not len(rows) or rows.column(column)[0].as_py() is None:
        return None
    return rows.column(column).combine_chunks().values.to_numpy(zero_copy_only=False)


def cosine_distances(query: np.ndarray, column: pa.ChunkedArray) -> np.ndarray:
    """1 - cosine similarity of each row to `query`, in float64 (exactly 0 for the same vector;
    LanceDB's float32 distance leaves about 6e-8 there). Only the k results are recomputed."""
    q = np.asarray(query, np.float64)
    if len(column) == 0:
        return np.zeros(0)
    x = column.combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(column), -1)
    same = (x == np.asarray(query, x.dtype)).all(axis=1)
    x = x.astype(np.float64)
    cos = (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    return np.where(same, 0.0, np.clip(1.0 - cos, 0.0, 2.0))


def similar(
    ref: str | np.ndarray,
    db: str | os.PathLike | Cache | None = None,
    *,
    k: int = 10,
    embedding: str = "faramir",
    exact: bool = False,
    nprobes: int | None = None,
    refine_factor: int | None = None,
    filter: Filter | None = None,
    **filters,
) -> pa.Table:
    """The `k` nearest cached images to REF by cosine distance of the FARAMIR or stock SigLIP
    embedding, among the rows passing the filter (a `Filter`, or its fields as keyword
    arguments), nearest first. REF: see `reference_vector`, or a vector.

    The k results all pass the filter: the rows passing it are found once per table version and
    filter and kept in the Cache (`Cache.allow_list`), so a long-lived process pays only the
    search. With an ANN index the search is approximate (`nprobes`, `refine_factor` tune it) and
    runs unfiltered, its candidates tested against the kept rows, with the answers of Lance's
    prefilter (`faramir.store.vectors.postfilter`; the prefilter itself where that cannot be sure of them). Rows
    added since the index was built are searched exactly and merged in; `exact` bypasses the
    index. Columns: distance (1 - cosine similarity), then as `faramir.store.top`."""
    from faramir.store.vectors.indexes import NPROBES, REFINE_FACTOR

    limits.check("k", k, 1, limits.MAX_NEIGHBOURS, QueryError)
    if nprobes is not None:
        limits.check("nprobes", nprobes, 1, limits.MAX_NPROBES, QueryError)
    if refine_factor is not None:
        limits.check("refine factor", refine_factor, 1, limits.MAX_REFINE_FACTOR, QueryError)
    cache = Cache.open(db)
    f = Filter.of(filter, **filters)
    column = embedding_column(embedding)
    if isinstance(ref, np.ndarray):
        vector = np.asarray(ref, np.float32)
    else:
        _, vector = reference_vector(cache, ref, embedding)

    def run(cols: HeadColumns, ds) -> pa.Table:
        nearest = {"column": column, "q": vector, "k": k, "metric": "cosine"}
        if exact:
            nearest["use_index"] = False
        else:
            nearest["nprobes"] = nprobes or NPROBES
            nearest["refine_factor"] = refine_factor or REFINE_FACTOR
        rows, distance = _nearest_rows(ds, nearest, cache.allow_list(ds, f.where(cols)), read_columns(cols))
        order = np.argsort(distance, kind="stable")  # the engine's order, exact ties aside
        rows = rows.append_column("distance", pa.array(distance))
        return results(rows.take(pa.array(order, pa.int64())), cols, f.threshold, first=["distance"])

    return on_head(cache, f.head, run)


def _nearest_rows(ds, nearest: dict, allow, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """(`columns` of the k nearest rows passing `allow`, their exact cosine distances), unordered:
    through `faramir.store.vectors.postfilter` where it can answer, else Lance's prefilter with the same `nearest`."""
    from faramir.store.vectors import postfilter as postfilter

    column, vector, k = nearest["column"], nearest["q"], nearest["k"]
    found = None if nearest.get("use_index") is False else postfilter.candidates(
        ds, column, vector, k, nearest["nprobes"], nearest["refine_factor"], allow)
    if found is None:
        rows = ds.scanner(nearest=nearest, prefilter=True, row_addr_allowlist=allow.serialized,
                          columns=[*columns, column], disable_scoring_autoprojection=True).to_table()
        return rows.drop_columns([column]), cosine_distances(vector, rows.column(column))
    ids, vectors = found  # the k nearest by exact distance; their other columns read for them alone
    distance = cosine_distances(vector, vectors)
    best = np.argsort(distance, kind="stable")[:k]
    return ds._take_rows(ids[best].tolist(), columns=columns), distance[best]  # in order (pylance 13)


def similar_to(image_id: str, db: str | os.PathLike | Cache | None = None, *, k: int = 24,
               embedding: str = "faramir", filter: Filter | None = None, **filters) -> pa.Table:
    """`similar` from a cached image named by content id only (its stored vector is the query:
    nothing is looked up by path, no file is read). Columns as `similar` gives them."""
    cache = Cache.open(db)
    vector = _vector_of(cache, check_id(image_id), embedding_column(embedding))
    if vector is None:
        raise UnknownImage(f"{image_id}: no cached image with this id has a {embedding} embedding in {cache.uri}")
    return similar(vector, cache, k=k, embedding=embedding, filter=filter, **filters)
