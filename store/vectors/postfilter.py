"""Filtered nearest neighbours by post-filtering an unfiltered ANN search, with the prefilter's answers.

Lance's prefilter checks every row it scans against the allow-list, which at a million rows costs
about as much as the scan itself. An unfiltered search does not, and a membership test of its
candidates afterwards is cheap (`AllowList.contains`). What makes the answers the prefilter's:

- At `nprobes` P and refine factor R the prefilter answers with the exact re-rank of the k·R
  passing rows nearest by the index's estimate within the P probed partitions, merged with an
  exact search of the passing rows the index does not cover yet.
- The unfiltered search at the same P, fetching F rows nearest by the same estimate, keeps the
  passing rows in that order. Once at least k·R of its F pass, its first k·R passing ones are the
  prefilter's k·R: re-ranking them (and merging the unindexed rows' exact search) gives the
  prefilter's answers. Where fewer pass and the fetch was cut at F, rows the prefilter would see
  may lie beyond the cut: `candidates` returns None and the caller runs the prefilter.

Decisions follow the embedding's neighbourhoods, so the share of passing rows among a query's
neighbours varies widely (on bench/stage_two.py's rows some queries find none of 100): F is
`OVERFETCH` × k·R, and filters passed by under `MIN_SHARE` of the rows go to the prefilter at once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from faramir.store.vectors.allow_lists import AllowList

# F = OVERFETCH × k·R rows fetched unfiltered (1,000 for k 10, R 5). At 1M rows the scan costs
# about the same for 400 or 2,000; with R 10, 10 sent 7 queries in 100 back to the prefilter and
# 20 sent 2; with R 5, 20 sends 2 and 40 sends 1.
OVERFETCH = 20
MIN_SHARE = 0.2  # filters passed by fewer rows than this share: the prefilter straight away


def indexed_fragments(ds, column: str) -> set[int]:
    """The fragments of `ds` that `column`'s vector index covers (none: no index)."""
    return {f for ix in ds.describe_indices() if list(ix.field_names) == [column]
            for segment in ix.segments for f in segment.fragment_ids}


def candidates(ds, column: str, vector, k: int, nprobes: int, refine_factor: int,
               allowed: AllowList) -> tuple[np.ndarray, pa.ChunkedArray] | None:
    """(row ids, vectors) of the rows among which the prefilter's k nearest passing rows are (at
    most k·R indexed ones and k unindexed ones: the k nearest of them by exact distance are its
    answers), or None where the prefilter must answer: no vector index, a filter passed by few
    rows, or too few passing rows in the fetch. Only vectors are read: the caller reads the other
    columns of the k it keeps."""
    indexed = indexed_fragments(ds, column)
    if not indexed or allowed.share < MIN_SHARE:
        return None
    want = k * refine_factor
    fetch = OVERFETCH * want
    # Without stable row ids (our tables) a row id is the row's address: asking for addresses as
    # well would add a read of every fetched row (1-1.5 ms at 2,000 rows).
    addressed = ds.has_stable_row_ids
    found = ds.scanner(nearest={"column": column, "q": vector, "k": fetch, "metric": "cosine", "nprobes": nprobes},
                       fast_search=True, columns=[], with_row_id=True, with_row_address=addressed,
                       disable_scoring_autoprojection=True).to_table()
    row_ids = found.column("_rowid").to_numpy()
    passing = row_ids[allowed.contains(found.column("_rowaddr").to_numpy() if addressed else row_ids)]
    if len(passing) < want and found.num_rows >= fetch:
        return None  # the cut may hide passing rows the prefilter would re-rank
    ids = passing[:want]
    vectors = ds._take_rows(ids.tolist(), columns=[column]).column(column)  # by row id, in order (pylance 13)
    unindexed = [f for f in ds.get_fragments() if f.fragment_id not in indexed]
    if unindexed:
        flat = ds.scanner(nearest={"column": column, "q": vector, "k": k, "metric": "cosine", "use_index": False},
                          fragments=unindexed, prefilter=True, row_addr_allowlist=allowed.serialized,
                          columns=[column], with_row_id=True, disable_scoring_autoprojection=True).to_table()
        ids = np.concatenate([ids, flat.column("_rowid").to_numpy()])
        vectors = pa.chunked_array([*vectors.chunks, *flat.column(column).chunks], vectors.type)
    return ids, vectors
