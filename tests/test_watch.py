"""`faramir ingest --watch` and its library twin `faramir.store.ingestion.watch.watch`: files that
appear while a test writes them are ingested once they settle, a half-written file never is,
renames add a path, deletions leave the cache as it was, Ctrl-C stops after the current commit
with exit status 0, a SIGKILL mid-batch then a rerun leaves every image once, and two watchers on
one cache never duplicate a row.

Tests wait for what they expect (polling, with generous limits), never for a fixed time."""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faramir.errors import InputError
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion import IngestProgress, IngestSummary, ingest_all
from faramir.store.ingestion.watch import WatchCommit, WatchGone, WatchStarted, WatchStopped, watch
from tests import crash
from tests.conftest import write_images

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 180.0  # the longest any wait here may take before the test fails (a loaded machine)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def wait_for(condition, what: str, limit: float = LIMIT_S):
    """Poll `condition()` until it is truthy; fail saying `what` after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {limit:.0f} s for {what}")
        time.sleep(0.05)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Watching:
    """`watch(...)` run in a thread; its events in `events` as they come."""

    def __init__(self, roots, **options):
        self.stop, self.events, self.seen = threading.Event(), queue.Queue(), []
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(roots, options), daemon=True)
        self.thread.start()

    def _run(self, roots, options):
        try:
            for event in watch(roots, stop=self.stop, **options):
                self.events.put(event)
        except BaseException as ex:  # shown by the test that waits
            self.error = ex
            self.events.put(ex)

    def drain(self) -> list:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return self.seen
            if isinstance(event, BaseException):
                raise event
            self.seen.append(event)

    def until(self, condition, what: str) -> list:
        """Wait until `condition(events so far)`; the events so far."""
        wait_for(lambda: condition(self.drain()), what)
        return self.seen

    def finish(self) -> list:
        self.stop.set()
        self.thread.join(LIMIT_S)
        assert not self.thread.is_alive(), "the watch did not stop"
        return self.drain()


def commits(events) -> list[WatchCommit]:
    return [e for e in events if isinstance(e, WatchCommit)]


def gone_paths(events) -> list[str]:
    return [p for e in events if isinstance(e, WatchGone) for p in e.paths]


def cached(db) -> dict[str, list[str]]:
    """id → paths of every cached image."""
    try:
        rows = Cache.open(db).read(schema.IMAGES, ["id", "paths"]).to_pylist()
    except Exception:  # no cache yet
        return {}
    return {r["id"]: sorted(r["paths"]) for r in rows}


def test_files_that_appear_are_ingested_renames_add_a_path_and_deletions_change_nothing(tmp_path, tiny_model):
    root, db = tmp_path / "incoming", tmp_path / "db"
    old = write_images(root, 2)
    os.utime(old[0], (time.time() - 60, time.time() - 60))  # settled long ago: the first pass reads it
    w = Watching([root], db=db, model=tiny_model, recursive=True, settle=0.3, workers=0)
    events = w.until(lambda ev: any(isinstance(e, WatchStarted) for e in ev), "the first pass")
    first = next(e for e in events if isinstance(e, IngestSummary))
    assert (first.found, first.new) == (1, 1)  # the other was still young: left to the watch
    w.until(lambda ev: sum(c.new for c in commits(ev)) == 1, "the young file")
    later = write_images(root / "new" / "deeper", 3, seed=5)  # folders made while watching (-r)
    (root / ".hidden.png").write_bytes(later[0].read_bytes()[::-1])  # hidden: never read
    (root / "notes.txt").write_text("not an image")
    w.until(lambda ev: sum(c.new for c in commits(ev)) == 4, "three new images")
    old[0].rename(root / "renamed.png")  # a rename: the content is known, only its path is new
    old[1].unlink()
    shutil.copy(later[1], root / "copy.png")
    w.until(lambda ev: sum(c.known for c in commits(ev)) == 2 and len(gone_paths(ev)) == 2,
            "the rename, the copy and the deletion")
    events = w.finish()
    assert isinstance(events[-1], WatchStopped) and events[-1].new == 5 and events[-1].failed == 0
    assert sorted(gone_paths(events)) == sorted([str(old[0]), str(old[1])])
    images = cached(db)
    assert len(images) == 5  # the deleted image's row stays, with its scores
    assert images[sha(root / "renamed.png")] == sorted([str(old[0]), str(root / "renamed.png")])
    assert images[sha(later[1])] == sorted([str(later[1]), str(root / "copy.png")])
    assert Cache.open(db).read(schema.FAILURES).num_rows == 0


SLOW_WRITER = """
import sys, time
data, path, pause = open(sys.argv[1], "rb").read(), sys.argv[2], float(sys.argv[3])
step = len(data) // 15 + 1
with open(path, "wb") as out:
    for at in range(0, len(data), step):
        out.write(data[at:at + step])
        out.flush()
        time.sleep(pause)
"""


def test_a_half_written_file_is_never_ingested(tmp_path, tiny_model):
    root, db = tmp_path / "incoming", tmp_path / "db"
    root.mkdir()
    [big] = write_images(tmp_path / "source", 1, size=(320, 240))
    [other] = write_images(tmp_path / "source", 1, size=(320, 240), seed=3, prefix="other")
    w = Watching([root], db=db, model=tiny_model, settle=2.0, workers=0)
    w.until(lambda ev: any(isinstance(e, WatchStarted) for e in ev), "the first pass")
    # written in 15 pieces, 0.2 s apart (3 s in all): each piece comes long before the file could settle
    subprocess.run([sys.executable, "-c", SLOW_WRITER, str(big), str(root / "slow.png"), "0.2"], check=True)
    w.until(lambda ev: sum(c.files for c in commits(ev)) == 1, "the slow file")
    # a file left half-written settles as it is: read, and recorded as unreadable, like any bad file
    half = root / "half.png"
    half.write_bytes(other.read_bytes()[: other.stat().st_size // 2])
    w.until(lambda ev: sum(c.failed for c in commits(ev)) == 1, "the half file")
    with open(half, "ab") as out:  # its writer comes back and finishes it: read again, now cached
        out.write(other.read_bytes()[other.stat().st_size // 2:])
    w.until(lambda ev: sum(c.new for c in commits(ev)) == 2, "the finished file")
    events = w.finish()
    assert set(cached(db)) == {sha(big), sha(other)}  # no row of a partial content
    assert [c.files for c in commits(events)] == [1, 1, 1]
    assert Cache.open(db).read(schema.FAILURES).num_rows == 0  # the failure is forgotten once it reads


def test_stopped_during_the_first_pass_it_commits_what_it_computed_and_a_rerun_finishes(tmp_path, tiny_model):
    root, db = tmp_path / "collection", tmp_path / "db"
    images = write_images(root, 12)
    for path in images:
        os.utime(path, (time.time() - 60, time.time() - 60))
    stop, events = threading.Event(), []
    for event in watch([root], db=db, model=tiny_model, stop=stop, workers=0, batch_size=2, commit_every=2):
        events.append(event)
        if isinstance(event, IngestProgress) and event.done:
            stop.set()  # as Ctrl-C does, after the first batch
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "IngestPlan" and kinds[-2:] == ["WatchCommit", "WatchStopped"]
    assert "WatchStarted" not in kinds and "IngestSummary" not in kinds
    part, committed = events[-2], len(cached(db))  # the batches drawn before the stop, and the one in flight
    assert part.interrupted and 0 < part.new == events[-1].new <= committed < 12
    assert ingest_all([root], db=db, model=tiny_model, workers=0).new == 12 - committed


def test_a_watch_refuses_what_it_cannot_watch(tmp_path, tiny_model):
    with pytest.raises(InputError, match="no such file or directory"):
        next(watch([tmp_path / "nowhere"], db=tmp_path / "db", model=tiny_model))
    with pytest.raises(InputError, match="settle 0.001: must be between"):
        next(watch([tmp_path], db=tmp_path / "db", model=tiny_model, settle=0.001))
    assert not (tmp_path / "db").exists()


def _faramir(*args, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "faramir.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)


def _watch_cli(root: Path, db: Path, weights: Path, log: Path, *extra) -> subprocess.Popen:
    return _faramir("ingest", root, "-r", "--watch", "--settle", "0.3", "--db", db, "--weights-dir", weights,
                    "--device", "cpu", "--workers", "0", *extra, log=log)


def test_the_cli_draws_a_line_per_commit_and_ctrl_c_stops_it_with_exit_status_0(tmp_path, tiny_weights):
    root, db, log = tmp_path / "incoming", tmp_path / "db", tmp_path / "watch.log"
    write_images(root, 2)
    child = _watch_cli(root, db, tiny_weights, log)
    try:
        wait_for(lambda: b"Watching " in log.read_bytes(), "the watch to start")
        write_images(root / "more", 3, seed=4)
        wait_for(lambda: len(cached(db)) == 5, "the new files")
        wait_for(lambda: b" failed (" in log.read_bytes().split(b"Watching ")[-1], "a commit line")
        child.send_signal(signal.SIGINT)
        assert child.wait(LIMIT_S) == 0, log.read_text()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    assert any("Stopping after the current commit" in line for line in lines)
    assert lines[-1].startswith("Note: Stopped: ") and "5 new, 0 known, 0 failed" in lines[-1]
    assert sum(" new, " in line and " known, " in line and line[:2].isdigit() for line in lines) >= 1
    assert "Traceback" not in log.read_text()


def test_a_watch_with_the_fast_decode_caches_fast_decoded_vectors(tmp_path, tiny_weights, tiny_model):
    from faramir.config import decoded_fingerprint

    root, db, log = tmp_path / "incoming", tmp_path / "db", tmp_path / "watch.log"
    write_images(root, 2)
    child = _watch_cli(root, db, tiny_weights, log, "--decode", "fast")
    try:
        wait_for(lambda: b"Watching " in log.read_bytes(), "the watch to start")
        write_images(root / "more", 1, seed=4)
        wait_for(lambda: len(cached(db)) == 3, "the new file")
        child.send_signal(signal.SIGINT)
        assert child.wait(LIMIT_S) == 0, log.read_text()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    fast = decoded_fingerprint(tiny_model.info.experts_fingerprint, "fast")
    cache = Cache.open(db)
    assert cache.get_meta("experts_fingerprint") == fast
    assert set(cache.images().to_arrow().column("experts_fingerprint").to_pylist()) == {fast}


WATCHER = """
import sys
from faramir.store.ingestion.watch import watch
imgs, db, weights = sys.argv[1:]
for event in watch([imgs], db=db, weights_dir=weights, device="cpu", workers=0, batch_size=2, commit_every=2,
                   settle=0.05):
    pass
"""


def test_a_watch_killed_mid_batch_then_a_rerun_leaves_every_image_once(tmp_path, tiny_weights, tiny_model):
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    content = crash.collection(imgs)
    crash.kill_mid_run(tmp_path, WATCHER, [str(imgs), str(db), str(tiny_weights)], db, timeout=LIMIT_S, poll=0.02)
    assert 0 < crash.images_rows(db) < len(set(content.values())), "the kill should land mid-batch"
    summary = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert summary.failed == 1  # broken.png
    crash.assert_each_image_once(db, content)


def test_two_watchers_on_one_cache_ingest_each_image_once(tmp_path, tiny_weights):
    root, db = tmp_path / "incoming", tmp_path / "db"
    first = write_images(root, 2)
    ingest_all([root], db=db, weights_dir=tiny_weights, device="cpu", workers=0)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    children = [_watch_cli(root, db, tiny_weights, log) for log in logs]
    try:
        for log in logs:
            wait_for(lambda: b"Watching " in log.read_bytes(), f"{log.name} to start")
        more = write_images(root / "more", 10, seed=8)
        shutil.copy(more[0], root / "same-as-more-0.png")
        wait_for(lambda: len(cached(db)) == 12 and len(cached(db)[sha(more[0])]) == 2, "every new file")
        for child in children:
            child.send_signal(signal.SIGINT)
        assert [child.wait(LIMIT_S) for child in children] == [0, 0], [log.read_text() for log in logs]
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
    content = {os.path.abspath(p): sha(Path(p)) for p in [*first, *more, root / "same-as-more-0.png"]}
    crash.assert_each_image_once(db, content)
