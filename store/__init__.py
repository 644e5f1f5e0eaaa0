"""The feature cache on LanceDB: stage one writes it, stage two reads it.

The library twins of the `faramir` commands, importable from here (each loads its module on
first use, so `import store` costs nothing and a query never imports torch):

    store.ingest, store.ingest_all, store.failures            stage one (`faramir ingest`, `failures`)
    store.rescore, store.list_heads, store.remove_head        heads (`faramir rescore`, `heads ...`)
    store.count, store.top, store.stats, store.similar        queries (`faramir top`, `stats`, `similar`)
    store.index, store.export                                 `faramir index`, `faramir export`
    store.search, store.duplicates                            `faramir search`, `faramir duplicates`
    store.import_labels, store.list_labels, store.remove_labels   `faramir labels ...`
    store.finetune, store.evaluate                            `faramir finetune`, `faramir evaluate`
    store.Cache, store.Filter                                 an open cache; which rows a query keeps

Modules, one concept each: db (Cache: opening, tables, heads registry), schema, errors, filters,
scores (a head's score columns → result rows), query, neighbours, browse (keyset pages, counts,
one image, two heads' disagreements), text_search, near_duplicates (close_pairs: its candidate
search), indexes, exporter, labels (also set/unset by content id),
tuning, heads, rescoring, gaps (rows a head has not scored), scoring (the head over cached rows; torch), ingestion/ (plan, run,
write, driver), allocator.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Cache": "store.db", "Filter": "store.filters",
    "ingest": "store.ingestion", "ingest_all": "store.ingestion", "failures": "store.ingestion.failures",
    "rescore": "store.rescoring", "list_heads": "store.heads", "remove_head": "store.heads",
    "count": "store.query", "top": "store.query", "stats": "store.query", "similar": "store.neighbours",
    "index": "store.indexes", "export": "store.exporter",
    "search": "store.text_search", "duplicates": "store.near_duplicates",
    "import_labels": "store.labels", "list_labels": "store.labels", "remove_labels": "store.labels",
    "finetune": "store.tuning", "evaluate": "store.tuning",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'store' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
