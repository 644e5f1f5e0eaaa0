"""The feature cache on LanceDB: stage one writes it, stage two reads it.

The library twins of the `faramir` commands, importable from here (each loads its module on
first use, so `import faramir.store` costs nothing and a query never imports torch):

    ingest, ingest_all, failures            stage one (`faramir ingest`, `failures`)
    watch                                   `faramir ingest --watch`
    rescore, list_heads, remove_head        heads (`faramir rescore`, `heads ...`)
    count, top, stats                       queries (`faramir top`, `stats`)
    similar, search, index                  search (`faramir similar`, `search`, `index`)
    duplicates                              `faramir duplicates`
    export                                  `faramir export`
    import_labels, list_labels, remove_labels   `faramir labels ...`
    finetune, evaluate                      `faramir finetune`, `faramir evaluate`
    queue, map_layout, heads_diff           `faramir queue`, `faramir map`, `faramir heads diff`
    Cache, Filter                           an open cache; which rows a query keeps

One sub-package per concept (docs/architecture.md draws them): `heads` (the registry, a head's
columns, scoring, rescoring, unscored rows, finetune, evaluate, comparing two heads), `queries`
(ranking, counting, one image), `search` (nearest, allow-lists, the post-filter, text, indexes),
`duplicates`, `labels` (with `queue`: what to label next), `export`, `ingestion`, `map` (the
2-D layout); beside them the cache itself (`cache`, `schema`,
`sql`, `filters`, `errors`, `migrations`, `recovery`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Cache": "faramir.store.cache", "Filter": "faramir.store.filters",
    "ingest": "faramir.store.ingestion", "ingest_all": "faramir.store.ingestion",
    "failures": "faramir.store.ingestion.failures", "watch": "faramir.store.ingestion.watch",
    "rescore": "faramir.store.heads.rescore", "list_heads": "faramir.store.heads.registry",
    "remove_head": "faramir.store.heads.registry",
    "count": "faramir.store.queries.counting", "stats": "faramir.store.queries.counting",
    "top": "faramir.store.queries.ranking",
    "similar": "faramir.store.vectors.nearest", "search": "faramir.store.vectors.text",
    "index": "faramir.store.vectors.indexes",
    "duplicates": "faramir.store.near_duplicates.groups",
    "export": "faramir.store.exports",
    "import_labels": "faramir.store.labels.files", "list_labels": "faramir.store.labels.table",
    "remove_labels": "faramir.store.labels.table",
    "finetune": "faramir.store.heads.finetune", "evaluate": "faramir.store.heads.evaluate",
    "queue": "faramir.store.labels.queue", "map_layout": "faramir.store.map.layout",
    "heads_diff": "faramir.store.heads.compare",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'faramir.store' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
