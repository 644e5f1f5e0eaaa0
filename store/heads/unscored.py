"""Gaps: cached rows that a registered head has not scored, counted and filled.

Every registered head scores every row. A row can still be committed without a head's scores:
an ingest computes the scores of the heads registered when it started, so rows it commits after
a rescore registered another head hold nulls there (and an ingest killed before it filled them
leaves them so). Whoever sees a gap deals with it, so none stays hidden:

- an ingest fills every head's gaps at its end, even one that had nothing to read;
- a rescore fills every head's gaps once its own head is registered;
- a query (which never loads torch) warns (`UnscoredRows`) that the rows it leaves out have no
  scores under its head, and says how to fill them.

Filling needs only the heads' own weights, which the ``heads`` table keeps: no image is read and
no expert runs.
"""

from __future__ import annotations

import warnings

import pyarrow as pa

from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import UnscoredRows

FILL_BATCH = 65_536  # rows scored and merged per commit


def unscored_where(prefix: str) -> str:
    return f"{prefix}_confidence IS NULL"


def warn_unscored(cache: Cache, head: str, prefix: str, ds) -> None:
    """Warn if some rows of `ds` (the images dataset) have no scores under `head`."""
    missing = cache.count_where(ds, unscored_where(prefix))
    if missing:
        warnings.warn(UnscoredRows(
            f"{missing} of {ds.count_rows()} cached images have no scores under head {head}; run "
            f"'faramir ingest' or 'faramir rescore' on {cache.uri} to score them (they are left out here)"),
            stacklevel=3)


def fill_gaps(cache: Cache) -> int:
    """Score every row that a registered head (whose columns are in the table) has not scored;
    returns how many (row, head) pairs were filled. Loads torch only when there is a gap."""
    if not cache.has_images():
        return 0
    ds = cache.dataset(schema.IMAGES)
    names = set(ds.schema.names)
    gaps = [h for h in cache.heads() if f"{h['prefix']}_confidence" in names
            and ds.count_rows(unscored_where(h["prefix"]))]
    return sum(_fill(cache, head) for head in gaps)


def _fill(cache: Cache, head: dict) -> int:
    from faramir.checkpoints import head_from_bytes
    from faramir.store.heads.scoring import HeadScorer, head_inputs

    prefix, cfg = head["prefix"], cache.config()
    scorer = HeadScorer(head_from_bytes(cache.head_checkpoint(head["name"]), cfg), FILL_BATCH)
    table = cache.images()
    present = set(table.schema.names)  # a head scored before schema version 2 has no P_free column
    fields = [f for f in schema.score_fields(prefix) if f.name in present]
    update_schema = pa.schema([schema.images_schema(cfg).field("id"), *fields])
    done = 0
    for batch in cache.dataset(schema.IMAGES).to_batches(columns=["id", *schema.HEAD_INPUTS],
                                                         filter=unscored_where(prefix), batch_size=FILL_BATCH):
        if not batch.num_rows:
            continue
        columns = scorer.score_columns(prefix, *head_inputs(batch, cfg))
        update = pa.table({"id": batch.column("id"), **{f.name: columns[f.name] for f in fields}},
                          schema=update_schema)
        try:
            table.merge_insert("id").when_matched_update_all().execute(update)
        except ValueError:
            if f"{prefix}_confidence" not in cache.images().schema.names:
                return done  # a rescore replaced this head meanwhile: its columns are gone
            raise
        done += batch.num_rows
    return done
