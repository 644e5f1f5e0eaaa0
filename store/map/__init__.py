"""The map: the whole cache laid out in 2-D (`faramir map`), kept in the cache, and the binary
arrays the gallery's Map view draws.

`model` holds the fitted layout as plain arrays (no pickle), `fitting` fits UMAP (`umap-learn`,
the `map` extra) on a sample, `placing` places any other row with the fitted model (UMAP's
transform, vectorised: the ingest of new rows never refits), `storage` keeps both in the
cache's ``layout`` and ``layout_model`` tables, `layout` is the command's library twin and the
ingest's hook, and `points` reads what the page draws (coordinates and colour values).
"""
