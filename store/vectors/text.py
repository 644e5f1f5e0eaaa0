"""Text search: a sentence, embedded by SigLIP's text tower, as the query of `similar` over the
cached stock SigLIP embeddings. No image is decoded and the image side of SigLIP is never loaded.

The query is `faramir.store.similar`'s: one prefiltered LanceDB vector query (cosine) over
`siglip_embedding`, with the same filters, the same index settings and the same exact
re-ranking. SigLIP's logit scale and bias only rescale the cosine, so the ranking is the cosine's.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc

from faramir.store.cache import Cache
from faramir.store.errors import QueryError
from faramir.store.filters import Filter
from faramir.store.vectors.nearest import similar

# Text vectors lie apart from the image vectors (SigLIP's modality gap), where the 1-bit IVF_RQ
# estimate orders candidates worse than for an image query: re-rank more of them exactly.
# bench/search.py, random-direction queries (a generated tower), recall@10 / p50 for refine
# factors 10, 30, 100: 0.50 / 17 ms, 0.74 / 18 ms, 0.86 / 29 ms at 100K rows; 0.36 / 47 ms,
# 0.40 / 47 ms, 0.50 / 71 ms at 1M rows, where the partitions probed limit it (`exact` does not).
SEARCH_REFINE_FACTOR = 30


def search(
    text: str,
    db: str | os.PathLike | Cache | None = None,
    *,
    k: int = 10,
    weights_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    encoder=None,
    exact: bool = False,
    nprobes: int | None = None,
    refine_factor: int | None = None,
    progress=None,
    filter: Filter | None = None,
    **filters,
) -> pa.Table:
    """The `k` cached images whose SigLIP embedding is nearest TEXT's, among the rows passing the
    filter (a `Filter`, or its fields as keyword arguments), most similar first. Columns:
    similarity (cosine, 1 at best), then as `faramir.store.top`.

    `encoder`: a loaded `faramir.text.TextEncoder` to reuse between queries (`load_encoder`); without it the text
    entry of `weights_dir` (resolved as `faramir.text_weights.resolve_text_dir` does, downloading
    into the default directory if needed, `progress(file, done, total)`) is loaded on `device`.
    `exact`, `nprobes`, `refine_factor`: as `similar` (the refine factor defaults to
    `SEARCH_REFINE_FACTOR`)."""
    if not text or not text.strip():
        raise QueryError("the search text is empty; give a few words, e.g. 'a dragon over water'")
    cache = Cache.open(db)
    if encoder is None:
        encoder = load_encoder(weights_dir, device, progress)
    config = cache.config()
    if config is not None and config.backbone_dim != encoder.dim:
        raise QueryError(
            f"the text tower in {encoder.info.weights_dir} makes {encoder.dim}-d vectors but {cache.uri} "
            f"holds {config.backbone_dim}-d SigLIP embeddings; use the weights directory the cache was "
            f"built with (--weights-dir)")
    vector = encoder.encode([text])[0]
    rows = similar(vector, cache, k=k, embedding="siglip", exact=exact, nprobes=nprobes,
                   refine_factor=refine_factor or SEARCH_REFINE_FACTOR, filter=filter, **filters)
    similarity = pc.subtract(pa.scalar(1.0), rows.column("distance"))
    return rows.set_column(rows.schema.get_field_index("distance"), "similarity", similarity)


def load_encoder(weights_dir: str | os.PathLike | None = None, device: str = "cpu", progress=None):
    """The text encoder of a weights directory (see `search`), on `device` (auto, cpu, cuda, mps)."""
    from faramir.devices import resolve_device
    from faramir.text_weights import load_text_encoder, resolve_text_dir

    root = resolve_text_dir(weights_dir, download=True, progress=progress)
    return load_text_encoder(root, resolve_device(device))
