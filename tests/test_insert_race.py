"""Two writers committing the same new content leave one row, even with the id index in place
(found by tests/chaos/run.py: two ingests started together duplicated an image about once in 20)."""

from __future__ import annotations

import pyarrow as pa

from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion.write import insert_new
from faramir.store.vectors.indexes import ensure_indexes
from tests.stage2_helpers import tiny_cache


def test_a_row_committed_meanwhile_by_another_writer_is_not_inserted_again(tmp_path):
    db = tmp_path / "db"
    tiny_cache(db, n=20)
    ensure_indexes(Cache.open(db), min_rows=10**9)  # the id index every ingest leaves behind
    assert "id" in {ix.columns[0] for ix in Cache.open(db).images().list_indices()}

    first, second = Cache.open(db).images().to_lance(), Cache.open(db).images().to_lance()  # same version
    existing = first.to_table()
    new = existing.slice(0, 1).set_column(0, "id", pa.array(["f" * 64], pa.string()))
    new = new.cast(existing.schema)
    assert insert_new(first, new) == 1
    assert insert_new(second, new) == 0  # planned on the version before the first's commit

    ids = Cache.open(db).read(schema.IMAGES, ["id"]).column("id").to_pylist()
    assert len(ids) == 21 and len(set(ids)) == 21
