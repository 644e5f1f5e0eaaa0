"""What `faramir.store.ingest` yields: a plan, progress after every batch, and a summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class IngestPlan:
    """First event: what the stat pass found, before any image is read."""

    db: str
    found: int  # image files named or discovered
    to_read: int  # files that will be read (new, changed, or never seen at this path)
    unchanged: int  # same path, size and mtime as cached: not read
    skipped_failures: int  # recorded failures with unchanged size and mtime: not retried


@dataclass
class IngestProgress:
    """After each batch: cumulative counts over the files read so far."""

    total: int  # = IngestPlan.to_read
    done: int  # files read so far
    new: int  # images computed and queued for the cache
    known: int  # content already cached or computed earlier in this run (no model run)
    failed: int  # unreadable files read so far
    elapsed_s: float  # since the first file was read
    warnings: list[str] = field(default_factory=list)  # new warnings, e.g. a bad colour profile

    @property
    def files_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class FailedFile:
    path: str
    reason: str
    failed_at: datetime
    recorded_earlier: bool = False  # unchanged since an earlier run's failure: not retried


@dataclass
class IngestSummary:
    """Last event. found = new + unchanged + duplicate + failed."""

    db: str
    found: int
    new: int  # new images: the experts ran on them
    unchanged: int  # already cached at this path (most not even read)
    duplicate: int  # content already cached, or seen earlier in this run, at another path
    failed: int  # unreadable, this run or recorded earlier (see `failures`)
    failures: list[FailedFile]
    elapsed_s: float  # whole run, compaction included
    compute_s: float  # from the first file read (model loaded) to the last commit
    compacted: list[str]  # tables compacted at the end
    indexed: list[str] = field(default_factory=list)  # columns whose indexes were built or updated
    # Seconds the model thread waited, of compute_s: for decoded batches ("decoding"), for the
    # device's results ("device"), for the writer to take a chunk ("writer"). Empty without a run.
    waits: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.new / self.compute_s if self.compute_s > 0 else 0.0


IngestEvent = IngestPlan | IngestProgress | IngestSummary
