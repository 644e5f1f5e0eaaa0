"""Finetune from the page: one background job at a time, its progress read by polling.

The job is the CLI's `faramir finetune --name NAME` followed by `faramir evaluate --head NAME`:
`faramir.store.heads.finetune.finetune` on the current labels, `faramir.store.heads.rescore.rescore` to register the new head,
`faramir.store.heads.evaluate` for its MCC, precision, recall and the MCC-best threshold. It runs in a
thread; the server's request threads stay free (torch and Lance release the GIL in their loops).
The server reads without torch: it is imported in the background (`Jobs.warm`) once the curator
writes a label or opens the finetune dialog, so that the finetune asked for next does not wait
seconds for the import.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from faramir.errors import FaramirError
from faramir.store import limits, schema
from faramir.store.errors import storage_error

EVALUATION_KEYS = ("n", "mcc", "precision", "recall", "f1", "accuracy", "confusion", "best")
FINETUNE_THREADS = 1  # torch's threads while training, as `faramir finetune`'s default: for this small head
# two threads waited on each other (2,000 labels at 100K rows: 8.8 s of training against 2.3 s with one)


class JobError(FaramirError):
    """A finetune job cannot be started as asked."""


class NameTaken(JobError):
    """The name asked for is a registered head's, and replacing it was not asked for."""


@dataclass
class FinetuneJob:
    id: int
    base: str
    name: str
    epochs: int
    threshold: float
    state: str = "training"  # training, scoring, evaluating, done, failed
    epoch: int = 0
    val_mcc: float | None = None  # this epoch's validation MCC (held-out labels)
    best_val_mcc: float | None = None
    base_val_mcc: float | None = None
    scored: int = 0  # rows rescored so far
    rows: int = 0
    evaluation: dict | None = None  # on all labels, at `threshold`
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds of each state that ended
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def public(self) -> dict:
        return asdict(self)


def free_name(base: str, taken: set[str]) -> str:
    """`BASE-curated-N` with the first N not taken (valid as a head name)."""
    stem = re.sub(r"-curated-\d+$", "", base)[:40]
    n = 1
    while f"{stem}-curated-{n}" in taken:
        n += 1
    return f"{stem}-curated-{n}"


class Jobs:
    """The finetune jobs of one server (at most one running)."""

    def __init__(self, db: str, heads_dir: Path):
        self.db, self.heads_dir = db, heads_dir
        self.lock = threading.Lock()
        self.jobs: dict[int, FinetuneJob] = {}
        self._warming: threading.Thread | None = None

    def warm(self) -> None:
        """Import what a finetune needs (torch, the head, the recipe, rescoring) in a background
        thread, once: importing torch took most of a finetune asked for from a cold server."""
        with self.lock:
            if self._warming is None:
                self._warming = threading.Thread(target=_import_finetune, name="finetune-warm", daemon=True)
                self._warming.start()

    def running(self) -> FinetuneJob | None:
        return next((j for j in self.jobs.values() if j.state not in ("done", "failed")), None)

    def get(self, job_id: int) -> FinetuneJob:
        if job_id not in self.jobs:
            raise JobError(f"no finetune job {job_id} on this server")
        return self.jobs[job_id]

    def start(self, base: str, name: str | None, epochs: int, threshold: float, taken: set[str],
              replace: bool = False) -> FinetuneJob:
        """Start a finetune of `base` into head `name` (None: a free one); a name among `taken`
        (the registered heads) only with `replace`."""
        limits.check("epochs", epochs, 1, limits.MAX_EPOCHS, JobError)
        limits.check("threshold", threshold, 0.0, 1.0, JobError)
        name = name or free_name(base, taken)
        if not schema.valid_head_name(name):
            raise JobError(f"{name[:80]!r}: not a valid head name; use letters, digits, '.', '_' and '-'")
        if name == base:
            raise JobError(f"name the finetuned head differently from its base {base!r}")
        if name in taken and not replace:
            raise NameTaken(f"a head named {name!r} exists; choose another name, or confirm that the new "
                            f"head replaces it")
        with self.lock:
            if (busy := self.running()) is not None:
                raise JobError(f"finetune job {busy.id} ({busy.name}) is still running; wait for it")
            job = FinetuneJob(len(self.jobs) + 1, base, name, epochs, threshold)
            self.jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), name=f"finetune-{job.id}", daemon=True).start()
        return job

    def _run(self, job: FinetuneJob) -> None:
        from faramir.store.heads.evaluate import evaluate
        from faramir.store.heads.finetune import finetune
        from faramir.store.heads.rescore import rescore

        def on_epoch(report):
            job.epoch, job.val_mcc, job.best_val_mcc = report.epoch, report.val_mcc, report.best_val_mcc
            if report.epoch == 0:
                job.base_val_mcc = report.val_mcc

        def on_rows(done, total):
            job.scored, job.rows = done, total

        mark = time.perf_counter()

        def enter(state: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            job.seconds[job.state] = round(now - mark, 3)
            job.state, mark = state, now

        try:
            self.heads_dir.mkdir(parents=True, exist_ok=True)
            out = self.heads_dir / f"{job.name}.pth"
            # The checkpoint is the gallery's own file, in its own folder: a name used before is rewritten.
            finetune(job.base, out, db=self.db, epochs=job.epochs, on_epoch=on_epoch, force=True,
                     threads=FINETUNE_THREADS)
            enter("scoring")
            rescore(out, job.name, db=self.db, progress=on_rows)
            enter("evaluating")
            result = evaluate(job.name, db=self.db, threshold=job.threshold)
            job.evaluation = {k: v for k, v in result.to_dict().items() if k in EVALUATION_KEYS}
            enter("done")
        except FaramirError as ex:
            job.error, job.state = str(ex).split("\n")[0], "failed"
        except Exception as ex:  # reported on the page, never lost in a thread
            refused = storage_error(ex, self.db)
            job.error, job.state = (str(refused) if refused else f"{type(ex).__name__}: {ex}").split("\n")[0], "failed"
            if refused is None:
                traceback.print_exc()
        finally:
            job.finished = time.time()


def _import_finetune() -> None:
    import torch

    import faramir.finetune  # noqa: F401
    import faramir.store.heads.evaluate  # noqa: F401
    import faramir.store.heads.finetune  # noqa: F401
    import faramir.store.heads.rescore  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # its first use imports torch._dynamo: 1.4 s
