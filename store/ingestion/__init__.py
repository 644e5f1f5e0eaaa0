"""Stage one: run the experts once per image and keep what stage two needs in the cache.

`ingest(paths, ...)` is a generator of progress events (`IngestPlan`, then an `IngestProgress`
per batch, then one `IngestSummary`); the CLI draws them, the library never prints.

How a run goes, one module per step:

1. `plan` (no image bytes read): discover the files, `stat()` each, and compare with the
   ``files`` table. A path whose size and mtime are unchanged, and whose content is still cached,
   is skipped. So is a recorded failure whose size and mtime are unchanged (unless
   `retry_failed`). When nothing is left to read the model is never even loaded.
2. `run`: worker processes read, hash (sha256) and preprocess the rest. A worker is given the
   cached content ids, so a renamed or copied file is recognised by content and not decoded. The
   model process runs the experts on each batch of new content only.
3. `write`: a background thread turns results into Arrow rows (scored with every registered head,
   so the released head `faramir-v1` ranks a collection right after ingest) and commits them in
   chunks, each a few atomic commits: a crash loses at most the chunk in flight.
4. `driver`: the above in turn, then compaction and indexes for the tables a run touched.

With `ray=ADDRESS` (`faramir ingest --ray`), steps 2 and 3 run on a Ray cluster instead:
`ray_run` (the pipeline, and the same accounting as `run`), `ray_tasks` (what the workers run:
reading, the experts, rows written as Lance fragments), `fragments` (the writer that commits a
chunk's fragments as one Append), `ray_cluster` (starting or joining Ray).

`failures` lists the files ingest could not read; `watch` keeps ingesting what appears under the
watched paths (`faramir ingest --watch`), one ordinary ingest per batch of settled files.
"""

from faramir.store.ingestion.driver import COMMIT_ROWS, COMMIT_SECONDS, COMPACT_AT, KEEP_VERSIONS, ingest, ingest_all
from faramir.store.ingestion.events import FailedFile, IngestEvent, IngestPlan, IngestProgress, IngestSummary

__all__ = [
    "COMMIT_ROWS", "COMMIT_SECONDS", "COMPACT_AT", "KEEP_VERSIONS", "FailedFile", "IngestEvent",
    "IngestPlan", "IngestProgress", "IngestSummary", "ingest", "ingest_all",
]
