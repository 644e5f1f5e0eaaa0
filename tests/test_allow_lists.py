"""Allow-lists (`faramir.store.vectors.allow_lists`) and the post-filter on tables whose row ids are not row
addresses (Lance's stable row ids), which our caches never enable but a table may."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa

from faramir.store.vectors import postfilter as postfilter
from faramir.store.vectors.allow_lists import AllowList
from faramir.store.vectors.nearest import cosine_distances


def _addresses(fragment: int, offsets) -> np.ndarray:
    return (np.uint64(fragment) << np.uint64(32)) + np.asarray(offsets, np.uint64)


def test_membership_matches_the_sorted_addresses_across_fragments():
    rng = np.random.default_rng(0)
    for trial in range(100):
        fragments = rng.choice(50, rng.integers(1, 5), replace=False)
        kept = np.concatenate([_addresses(f, rng.choice(1000, rng.integers(0, 300), replace=False))
                               for f in fragments])
        allowed = AllowList(rng.permutation(kept), 5000)
        # kept rows, rows of the same fragments past the last kept one, and fragments with none
        probe = np.concatenate([kept, _addresses(0, []),
                                (rng.integers(0, 60, 500).astype(np.uint64) << np.uint64(32))
                                + rng.integers(0, 1200, 500).astype(np.uint64)])
        assert np.array_equal(allowed.contains(probe), np.isin(probe, kept)), trial
        assert allowed.share == len(kept) / 5000
        assert np.array_equal(allowed.addresses, np.sort(kept))
    empty = AllowList(np.zeros(0, np.uint64), 10)
    assert not empty.contains(_addresses(0, [0, 1, 2])).any() and empty.share == 0.0


def test_the_post_filter_tests_addresses_where_row_ids_are_stable(tmp_path):
    """With stable row ids a row's id stays while compaction moves its address: candidates are
    tested by address (what the allow-list holds) and returned by id, as the prefilter answers."""
    rng = np.random.default_rng(1)
    n, d = 3000, 32
    centres = rng.standard_normal((30, d)).astype(np.float32)
    x = centres[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    table = pa.table({"n": pa.array(np.arange(n)), "keep": pa.array(rng.random(n) < 0.6),
                      "v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)})
    ds = lance.write_dataset(table, tmp_path / "t.lance", max_rows_per_file=1000, enable_stable_row_ids=True)
    ds.delete("n % 7 = 0")
    ds.optimize.compact_files(target_rows_per_fragment=5000)  # one fragment: addresses move, ids stay
    ds = lance.dataset(tmp_path / "t.lance")
    ds.create_index("v", "IVF_RQ", metric="cosine", num_partitions=8)
    ds = lance.dataset(tmp_path / "t.lance")
    assert ds.has_stable_row_ids
    rows = ds.to_table(columns=[], with_row_id=True, with_row_address=True)
    assert not np.array_equal(rows.column("_rowid").to_numpy(), rows.column("_rowaddr").to_numpy())
    allowed = AllowList.of(ds, "keep")
    for q in (0, 5, 400, 2999):
        vector = x[q]
        found = postfilter.candidates(ds, "v", vector, 10, 4, 10, allowed)
        assert found is not None
        ids, vectors = found
        best = ids[np.argsort(cosine_distances(vector, vectors), kind="stable")[:10]]
        got = ds._take_rows(best.tolist(), columns=["n", "keep"])
        assert all(got.column("keep").to_pylist())
        want = ds.to_table(nearest={"column": "v", "q": vector, "k": 10, "metric": "cosine", "nprobes": 4,
                                    "refine_factor": 10}, filter="keep", prefilter=True, columns=["n"])
        assert sorted(got.column("n").to_pylist()) == sorted(want.column("n").to_pylist()), q
