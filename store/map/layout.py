"""`faramir map`: the whole cache laid out in 2-D and kept in the cache; and the ingest's hook that
places the rows it added (`place_new`), so the map never needs refitting to show them.

A fit (`fit`, the first `faramir map`, or `--refit`) draws a seeded sample of the rows, fits
UMAP on it (`faramir.store.map.fitting`), then places every other row with the fitted model
(`faramir.store.map.placing`) and stores the layout (`faramir.store.map.storage`). Later runs,
and every ingest that added rows, place only the rows without a place: the stored places never
move.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faramir.store import limits, schema
from faramir.store.cache import Cache
from faramir.store.errors import MapError
from faramir.store.map import storage
from faramir.store.map.model import LayoutModel

PLACE_BATCH = 32_768  # rows read and placed at once (150 MB of 1152-d embeddings)
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class LayoutInfo:
    """What `map_layout` did."""

    embedding: str
    rows: int  # rows with a place now
    sample: int  # rows the model was fitted on
    fitted: bool  # a new fit (else only rows without a place were placed)
    placed: int  # rows placed with the model by this run

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def map_layout(db: str | os.PathLike | Cache | None = None, *, embedding: str = "faramir", sample: int = 50_000,
               refit: bool = False, seed: int = 0, progress: Progress | None = None) -> LayoutInfo:
    """Lay the cache out in 2-D by its `embedding` (faramir or siglip) and store the layout: UMAP
    fitted on `sample` rows (seeded by `seed`), the rest placed with the fitted model. A cache
    with a layout of that embedding gets only its rows without a place placed, unless `refit`
    (another embedding always refits). `progress(stage, done, total)`: "fit", then "place"."""
    if embedding not in schema.EMBEDDING_COLUMNS:
        raise MapError(f"embedding {embedding!r}: use one of {', '.join(schema.EMBEDDING_COLUMNS)}")
    limits.check("sample", sample, 2, limits.MAX_MAP_SAMPLE, MapError)
    limits.check("seed", seed, 0, limits.MAX_SEED, MapError)
    cache = Cache.open(db)
    cache.images()  # raises NoCache, saying how to make one
    cache.check_writable()
    model = storage.read_model(cache)
    if model is not None and model.embedding == embedding and not refit:
        placed = place_new(cache, progress)
        return LayoutInfo(embedding, cache.dataset(schema.LAYOUT).count_rows(), len(model.coords), False, placed)
    return _fit(cache, embedding, sample, seed, progress)


def _fit(cache: Cache, embedding: str, sample: int, seed: int, progress: Progress | None) -> LayoutInfo:
    from faramir.store.map.fitting import fit, require_umap

    require_umap()  # before minutes of reading, not after
    column = schema.EMBEDDING_COLUMNS[embedding]
    ds = cache.dataset(schema.IMAGES)
    n = ds.count_rows()
    if n == 0:
        raise MapError(f"{cache.uri} holds no images yet; run 'faramir ingest PATH' first")
    chosen = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    if progress:
        progress("fit", 0, len(chosen))
    rows = ds.take(chosen, columns=["id", column])
    model = fit(schema.vectors(rows.column(column)), embedding, seed)
    if progress:
        progress("fit", len(chosen), len(chosen))
    in_sample = np.zeros(n, bool)
    in_sample[chosen] = True
    places = np.zeros((n, 2), np.float32)  # in the table's row order, so the page's points line up with it
    places[chosen] = model.coords
    ids, done = [], len(chosen)
    for batch in ds.to_batches(columns=["id", column, "_rowoffset"], batch_size=PLACE_BATCH):
        at = batch.column("_rowoffset").to_numpy()
        ids.append(batch.column("id"))
        rest = ~in_sample[at]
        if rest.any():
            places[at[rest]] = _place(model, schema.vectors(batch.filter(pa.array(rest)).column(column)))
            done += int(rest.sum())
        if progress:
            progress("place", done, n)
    storage.write_fitted(cache, model, len(chosen), pa.chunked_array(ids, pa.string()), places)
    return LayoutInfo(embedding, n, len(chosen), True, n - len(chosen))


def place_new(cache: Cache, progress: Progress | None = None) -> int:
    """Place the cached rows that have no place on the stored layout, with its fitted model (the
    stored places stay as they are); how many. Nothing when the cache has no layout."""
    model = storage.read_model(cache) if cache.has_images() else None
    if model is None:
        return 0
    column = schema.EMBEDDING_COLUMNS[model.embedding]
    ds = cache.dataset(schema.IMAGES)
    placed = cache.read(schema.LAYOUT, ["id"]).column("id")
    images = ds.to_table(columns=["id", "_rowoffset"])
    todo = images.filter(pc.invert(pc.is_in(images.column("id"), placed))).column("_rowoffset").to_numpy()
    done = 0
    for start in range(0, len(todo), PLACE_BATCH):
        rows = ds.take(todo[start:start + PLACE_BATCH], columns=["id", column])
        places = _place(model, schema.vectors(rows.column(column)))
        done += storage.append_placed(cache, model, rows.column("id"), places)
        if progress:
            progress("place", done, len(todo))
    return done


def _place(model: LayoutModel, vectors: np.ndarray) -> np.ndarray:
    from faramir.store.map.placing import place

    return place(model, vectors)
