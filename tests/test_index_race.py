"""Index builds racing each other: two processes building the same missing index both finish
(tests/chaos/run.py: a rescore or `faramir index` lost its CreateIndex commit to another's and crashed)."""

from __future__ import annotations

import lancedb.table

from faramir.store.cache import Cache
from faramir.store.vectors.indexes import ensure_indexes, index
from tests.stage2_helpers import tiny_cache


def _another_process_builds_it_first(monkeypatch, db):
    """The first create_index call of this process finds the same index just committed by another
    writer (a second, independent handle on the cache): a real concurrent commit, made at the
    worst moment, after this process decided the index was missing."""
    original = lancedb.table.LanceTable.create_index
    calls = []

    def create_index(self, column, *args, **kwargs):
        if not calls:
            calls.append(column)
            original(Cache.open(db).images(), column, *args, **kwargs)
        return original(self, column, *args, **kwargs)

    monkeypatch.setattr(lancedb.table.LanceTable, "create_index", create_index)
    return calls


def _index_columns(db) -> list[str]:
    return sorted(tuple(ix.columns)[0] for ix in Cache.open(db).images().list_indices())


def test_ensure_indexes_finishes_when_another_writer_builds_an_index_first(tmp_path, monkeypatch):
    db = tmp_path / "db"
    tiny_cache(db, n=30)
    for ix in Cache.open(db).images().list_indices():
        Cache.open(db).images().drop_index(ix.name)
    calls = _another_process_builds_it_first(monkeypatch, db)
    ensure_indexes(Cache.open(db), min_rows=10**9)
    assert calls and calls[0] in _index_columns(db)
    assert len(_index_columns(db)) == len(set(_index_columns(db))) == 5  # id, aesthetic, three of the head


def test_faramir_index_finishes_when_another_writer_builds_the_ann_index_first(tmp_path, monkeypatch):
    db = tmp_path / "db"
    tiny_cache(db, n=300)
    calls = _another_process_builds_it_first(monkeypatch, db)
    index(db)
    assert calls == ["faramir_embedding"] and "faramir_embedding" in _index_columns(db)
