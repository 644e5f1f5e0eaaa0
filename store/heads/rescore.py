"""Rescoring: every cached row scored with a head checkpoint, registered under a name.

A head's scores are columns of the ``images`` table under a column prefix (`faramir.store.schema`).
`rescore` never changes a prefix's columns in place:

1. It writes a fresh set of columns under a new prefix. For each fragment, Lance's merge_columns
   runs a batch UDF over the three head inputs only and writes one new data file holding only
   the new columns; one ``Merge`` commit then adds them to every fragment. The embedding data
   files are not rewritten, row ids stay, and the vector index stays valid. If an ingest commits
   meanwhile, the commit conflicts and is retried: fragments already scored keep their new file,
   only new fragments are scored.
   A head whose frozen part (everything a finetune leaves alone: norms, linear_1, activation_1,
   linear_2) equals a registered head's computes the same v and f for every row, and the same
   labels (functions of v). Its UDF reads that head's v and f (32 floats a row instead of the
   embeddings' 1,296), runs only the decision layers, and writes only the decision and the
   confidence: 8 bytes a row. Its record says where its labels, v and f are: that head's columns
   (`faramir.store.schema.HeadColumns`). That is how a finetuned head is scored.
2. It registers the head under that name with its columns: that one-row commit is the moment the
   new scores replace the old for every reader, who resolves a name to its columns through the
   ``heads`` table (and retries once if the columns it resolved were dropped under it).
3. It scores every row that any registered head has not scored (`faramir.store.heads.unscored`):
   rows an ingest appended between steps 1 and 2 (it wrote nulls there), then drops the old
   columns no registered head reads (metadata only: their data goes at the next compaction). A
   finetuned head keeps reading its base's v and f after the base is removed or rescored.

A crash before step 2 leaves the old scores in force and unreferenced columns behind: harmless,
and never reused, since a new prefix avoids every prefix present in the table. Two rescores of
one name running at once may pick the same prefix: the second to commit finds it taken and
scores under the next one. A head registered to read another head's v and f whose columns a
concurrent `heads rm` dropped meanwhile is scored again from the embeddings.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from faramir.checkpoints import frozen_fingerprint, head_to_bytes, load_head_checkpoint
from faramir.store import limits, schema
from faramir.store.cache import Cache
from faramir.store.errors import HeadError, PoolMismatch
from faramir.store.heads import registry
from faramir.store.heads.registry import HeadInfo, describe, drop_unread
from faramir.store.heads.scoring import HeadScorer, decision_scores, head_inputs
from faramir.store.heads.unscored import fill_gaps
from faramir.store.schema import HEAD_INPUTS, HeadColumns

COMMIT_ATTEMPTS = 5  # tries of the rescore commit while an ingest keeps committing
RESCORE_THREADS = 2  # fragments scored at once (reading one overlaps the arithmetic on another)
RESCORE_BATCH = 4096  # rows per head forward: ~19 MB of embeddings, small enough for the allocator to reuse
DECISION_BATCH = 65536  # rows per decision-layers-only batch: 8 MB of v and f (Lance may hand fewer)


def _prefixes_in(table_schema: pa.Schema) -> set[str]:
    """Column prefixes that have a score column in the images table (registered or not)."""
    return {name.rsplit("_", 1)[0] for name in table_schema.names if name.endswith(("_confidence", "_logits"))}


def _pool_mismatch_message(path, pool_fp: str, cache_pool: str, uri: str) -> str:
    return (
        f"{path}: its attention pool (attn_pool.*, fingerprint {pool_fp[:12]}) is not the one this "
        f"cache's FARAMIR embeddings were made with ({cache_pool[:12]}), so its head cannot be applied "
        f"to them. To use this checkpoint, rebuild a cache with it: put it as faramir-v1.pth in a "
        f"weights directory beside the other three files and run 'faramir ingest PATH --weights-dir DIR "
        f"--db NEW_DB'. A head-only file (norm.* and head.*) trained on this cache's pool can be rescored "
        f"into {uri} as it is."
    )


def rescore(
    head: str | os.PathLike,
    name: str,
    *,
    db: str | os.PathLike | Cache | None = None,
    batch_size: int = RESCORE_BATCH,
    index: bool = True,
    reuse: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> HeadInfo:
    """Score every cached row with the head checkpoint `head` and register it as `name`.

    `head` is in upstream's key format: a full faramir-v1.pth (its attn_pool.* must be the cache's)
    or a file with only norm.* and head.*. An existing head of that name is replaced atomically.
    `progress(rows_done, rows_total)` is called after every batch, from Lance's worker threads
    (inside its runtime: it must not call Lance itself). With `index`, scalar indexes
    on the new columns (and the ANN index, when the table is large enough) are built afterwards.
    With `reuse`, a head whose frozen part equals a registered head's (a finetune of it) is
    scored from that head's cached v and f by its decision layers alone, and reads that head's
    labels, v and f from then on; without, from the embeddings. Returns the head as `list_heads`
    describes it (`scored_from`: the registered head whose v and f it reads, or None)."""
    if not schema.valid_head_name(name):
        raise HeadError(f"{name!r}: not a valid head name; use letters, digits, '.', '_' and '-' "
                        f"(at most 64, starting with a letter or digit)")
    limits.check("batch size", batch_size, 1, limits.MAX_HEAD_BATCH, HeadError)
    cache = Cache.open(db)
    cache.images()  # raises NoCache, saying how to make one, before anything is loaded
    cache.check_writable()
    cfg = cache.config()
    cache_pool = cache.get_meta("pool_fingerprint") or ""
    model, head_state, pool_fp, head_fp = load_head_checkpoint(head, cfg, known_pool=cache_pool or None)
    if pool_fp is not None and cache_pool and pool_fp != cache_pool:
        raise PoolMismatch(_pool_mismatch_message(head, pool_fp, cache_pool, cache.uri))

    old = {h["name"]: h for h in registry.heads(cache)}.get(name)
    replaced = [HeadColumns.of(old)] if old is not None else []
    frozen = frozen_fingerprint(head_state) if reuse else None
    for _ in range(COMMIT_ATTEMPTS):
        cols = _score_columns(cache, name, model, cfg, batch_size, progress, frozen)
        record = registry.register(  # the commit point: readers now see the new scores
            cache, name=name, columns=cols, fingerprint=head_fp, pool_fingerprint=pool_fp or "",
            source=str(Path(head).resolve()), checkpoint=head_to_bytes(head_state))
        if not cols.shares or cols.logits in cache.images().schema.names:
            break
        replaced.append(cols)  # a concurrent `heads rm` dropped the v and f it reads:
        frozen = None  # score it again, from the embeddings
    fill_gaps(cache)
    for gone in replaced:
        drop_unread(cache, gone)
    if index:
        from faramir.store.vectors.indexes import ensure_indexes

        ensure_indexes(cache, heads=[name])
    return describe(cache, record)


def _sharing_head(cache: Cache, frozen: str, names: set[str]) -> HeadColumns | None:
    """The columns of the oldest registered head with frozen fingerprint `frozen` whose v and f
    are among the table's columns `names` (heads scored before schema version 2 have no f
    column), or None. Every finetune of a head reads the same v and f."""
    for record in registry.heads(cache):
        cols = HeadColumns.of(record)
        if record.get("frozen_fingerprint") == frozen and {cols.logits, cols.free} <= names:
            return cols
    return None


class _ScoreUDF:
    """The batch UDF of a rescore: the head's six score columns from the three head inputs, or,
    once `reads` names the columns of a head sharing its frozen part, its decision and confidence
    from that head's v and f by the decision layers alone (a row that head has no scores for,
    which its own rescore is still filling in, sets `unscored` and stops the merge).

    Fragments are scored on several threads; each thread has its own HeadScorer (and so its own
    input buffer). `progress(done, total)` is called under a lock after every batch."""

    def __init__(self, prefix: str, model, cfg, batch_size: int, progress: Callable[[int, int], None] | None):
        self.prefix, self.model, self.cfg, self.batch_size, self.progress = prefix, model, cfg, batch_size, progress
        self.local = threading.local()
        self.lock = threading.Lock()
        self.done = self.total = 0
        self.cols = HeadColumns(prefix, prefix)
        self.unscored = False

    @property
    def schema(self) -> pa.Schema:
        """The columns it writes: all six, or, sharing, the decision and confidence."""
        return pa.schema([f for f in schema.score_fields(self.prefix) if f.name in self.cols.own])

    def reads(self, sharing: HeadColumns | None) -> tuple[list[str], int]:
        """Score from the v and f at `sharing` (None: from the embeddings); returns the columns
        and the batch size to read."""
        self.cols = HeadColumns(self.prefix, sharing.shared if sharing else self.prefix)
        if sharing is None:
            return HEAD_INPUTS, self.batch_size
        return [sharing.logits, sharing.free], DECISION_BATCH

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self.cols.shares:
            scorer = getattr(self.local, "scorer", None)
            if scorer is None:
                scorer = self.local.scorer = HeadScorer(self.model, self.batch_size)
            arrays = scorer.score_columns(self.cols, *head_inputs(batch, self.cfg))
        else:
            logits, free = batch.columns
            if logits.null_count or free.null_count:
                self.unscored = True
                raise HeadError(f"the head whose v and f are {self.cols.shared}_* has rows without scores")
            arrays = {self.cols.column(k): v for k, v in decision_scores(self.model, logits, free).items()}
        with self.lock:
            self.done += batch.num_rows
            if self.progress is not None:
                self.progress(min(self.done, self.total), self.total)
        out = self.schema
        return pa.RecordBatch.from_arrays([arrays[name] for name in out.names], schema=out)


class _PrefixTaken(Exception):
    """Another rescore of the same name committed columns under the prefix this one chose."""


def _score_columns(cache: Cache, name: str, model, cfg, batch_size: int,
                   progress: Callable[[int, int], None] | None, frozen: str | None) -> HeadColumns:
    """The columns written: `_add_score_columns` under the first prefix free for `name`, or the
    next one while concurrent rescores of that name take it first."""
    for _ in range(COMMIT_ATTEMPTS):
        taken = {h["prefix"] for h in registry.heads(cache)} | _prefixes_in(cache.images().schema)
        prefix = schema.new_prefix(name, taken)
        try:
            return _add_score_columns(cache, prefix, model, cfg, batch_size, progress, frozen)
        except _PrefixTaken:
            continue
    raise HeadError(f"{cache.uri}: other rescores of {name!r} kept running; run this one again once they end")


def _columns_alone(cache: Cache, dataset, score: _ScoreUDF) -> HeadColumns:
    """An empty table gets the columns alone (metadata only)."""
    score.reads(None)
    try:
        dataset.add_columns(list(score.schema))
    except Exception:
        if f"{score.prefix}_confidence" in cache.images().schema.names:
            raise _PrefixTaken(score.prefix) from None
        raise
    return score.cols


def _add_score_columns(cache: Cache, prefix: str, model, cfg, batch_size: int,
                       progress: Callable[[int, int], None] | None, frozen: str | None = None) -> HeadColumns:
    """Write the score columns of `prefix` for every row, without rewriting any other column;
    returns where the head's six columns are.

    Each fragment gets one new data file holding only the new columns (Lance's merge_columns with
    a batch UDF reading the three head inputs, or the v and f of a registered head whose frozen
    fingerprint is `frozen`); one ``Merge`` commit then adds them all. If an ingest commits
    meanwhile, the commit conflicts: the fragments already scored keep their new file and only
    the new fragments are scored before the next try."""
    import lance
    from lance.commit import CommitConflictError
    from lance.dataset import LanceOperation

    score = _ScoreUDF(prefix, model, cfg, batch_size, progress)
    scored: dict[tuple, tuple] = {}  # (fragment id, its data files) → (new data file, columns read)
    base_schema = merged_schema = None
    for _ in range(COMMIT_ATTEMPTS):
        dataset = cache.images().to_lance()  # the latest version
        if f"{prefix}_confidence" in dataset.schema.names:
            raise _PrefixTaken(prefix)
        sharing = _sharing_head(cache, frozen, set(dataset.schema.names)) if frozen else None
        if dataset.schema != base_schema:  # new field ids are assigned from the schema: start over
            scored.clear()
            base_schema = dataset.schema
        scored = {key: done for key, done in scored.items() if done[1] == score.reads(sharing)[0]}
        fragments = [f.metadata for f in dataset.get_fragments()]
        score.total = sum(m.num_rows for m in fragments)
        if not fragments:
            return _columns_alone(cache, dataset, score)
        keys = [(meta.id, tuple(f.path for f in meta.files)) for meta in fragments]
        todo = [(key, fragment) for key, fragment in zip(keys, dataset.get_fragments()) if key not in scored]
        columns, rows = score.reads(sharing)
        udf = lance.udf.BatchUDF(score, score.schema)
        # Fragments in parallel: Lance reads one (without the GIL) while the head scores another,
        # so reading the embeddings and the arithmetic overlap instead of adding up.
        try:
            with ThreadPoolExecutor(RESCORE_THREADS) as pool:
                merges = pool.map(lambda f: f.merge_columns(udf, columns=columns, batch_size=rows),
                                  [fragment for _, fragment in todo])
                for (key, _), (new_meta, merged_schema) in zip(todo, merges):
                    scored[key] = (new_meta.files[-1], columns)
        except Exception:
            if not score.unscored:
                raise
            score.unscored, frozen = False, None  # the rest from the embeddings
            continue
        merged = [dataclasses.replace(meta, files=[*meta.files, scored[key][0]]) for key, meta in zip(keys, fragments)]
        try:
            lance.LanceDataset.commit(dataset, LanceOperation.Merge(merged, merged_schema),
                                      read_version=dataset.version)
            return score.cols
        except CommitConflictError:
            continue
    raise HeadError(f"{cache.uri} kept changing while rescoring ({COMMIT_ATTEMPTS} tries); "
                    f"run the rescore again once the ingest writing to it has finished")
