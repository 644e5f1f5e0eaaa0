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
from faramir.store.heads import registry
from faramir.store.schema import HeadColumns

FILL_BATCH = 65_536  # rows scored and merged per commit


def unscored_where(cols: HeadColumns) -> str:
    """The rows a head has not scored: its own decision is missing, or the v and f it reads."""
    return f"{cols.confidence} IS NULL" + (f" OR {cols.logits} IS NULL" if cols.shares else "")


def warn_unscored(cache: Cache, head: str, cols: HeadColumns, ds) -> None:
    """Warn if some rows of `ds` (the images dataset) have no scores under `head`."""
    missing = cache.count_where(ds, f"{cols.confidence} IS NULL")
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
    gaps = [h for h in registry.heads(cache) if {(c := HeadColumns.of(h)).confidence, c.logits} <= names
            and ds.count_rows(unscored_where(c))]
    return sum(_fill(cache, head) for head in gaps)


def _fill(cache: Cache, head: dict) -> int:
    """Score the rows `head` has not scored, by its whole forward over their embeddings: its own
    columns, and the v and f it reads from another head where those are missing too (a row an
    ingest wrote while that head was no longer registered to write them)."""
    from faramir.checkpoints import head_from_bytes
    from faramir.store.heads.scoring import HeadScorer, head_inputs

    cols, cfg = HeadColumns.of(head), cache.config()
    scorer = HeadScorer(head_from_bytes(registry.checkpoint(cache, head["name"]), cfg), FILL_BATCH)
    table = cache.images()
    present = set(table.schema.names)  # a head scored before schema version 2 has no P_free column
    own = [c for c in cols.own if c in present]
    shared = [c for c in cols.names if c not in cols.own and c in present]
    read = ["id", *schema.HEAD_INPUTS, *([cols.logits] if cols.shares else [])]
    done = 0
    for batch in cache.dataset(schema.IMAGES).to_batches(columns=read, filter=unscored_where(cols),
                                                         batch_size=FILL_BATCH):
        if not batch.num_rows:
            continue
        scores = scorer.score_columns(cols, *head_inputs(batch, cfg))
        rows = pa.table({"id": batch.column("id"), **scores})
        updates = [rows.select(["id", *own])]
        if cols.shares:  # the v and f it reads, only where they are missing
            updates.append(rows.filter(batch.column(cols.logits).is_null()).select(["id", *shared]))
        try:
            for update in updates:
                if update.num_rows:
                    table.merge_insert("id").when_matched_update_all().execute(
                        update.cast(_schema_of(table.schema, update.column_names)))
        except ValueError:
            if cols.confidence not in cache.images().schema.names:
                return done  # a rescore replaced this head meanwhile: its columns are gone
            raise
        done += batch.num_rows
    return done


def _schema_of(table_schema: pa.Schema, names: list[str]) -> pa.Schema:
    return pa.schema([table_schema.field(name) for name in names])
