"""tests/chaos/run.py's hostile collection and storage faults.

hostile  `ingest -r` over tests/hostile.py's collection (when run as root, without the capability
         to read any file, so the mode-000 file is unreadable): the run finishes, every good file is cached, every bad one
         is listed by `faramir failures --format jsonl` with a one-line reason. When the run
         itself fails, each file is then ingested alone, to show which ones break it.
storage  each table's latest manifest truncated to zero bytes (what a power cut can leave, since
         Lance does not fsync): the next command opens the table at its last good version and
         says so in one line; the disk filling up mid-ingest (a 20 MB tmpfs as the cache's
         disk): a one-line error, the cache intact, and a rerun completes once space is freed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.chaos import commands as cmds

HOSTILE_TIMEOUT_S = 180.0  # the whole collection (a few seconds' work on an idle machine)
ALONE_TIMEOUT_S = 60.0  # one file of it
TMPFS_SIZE = "20m"
FREE_BYTES = 256 * 1024  # left free on the tmpfs before the ingest that fills it
TABLES = ("images", "files", "failures", "heads", "labels", "meta")
_mounts: list[Path] = []


# -- hostile collection --------------------------------------------------------------------------

def _ingest(weights: str, collection: str, db: str, as_others: bool) -> dict:
    """`ingest -r` of one folder; with `as_others`, without root's power to read any file."""
    if as_others and not drop_file_override():
        raise RuntimeError("could not drop CAP_DAC_OVERRIDE: the mode-000 file would be readable")
    import faramir.store as store

    s = store.ingest_all([collection], db=db, weights_dir=weights, device="cpu", workers=1, batch_size=4,
                         recursive=True)
    return {"found": s.found, "new": s.new, "failed": s.failed}


def drop_file_override() -> bool:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this (single-threaded) process, as
    `setpriv --inh-caps` would: root then obeys file modes like any user, so a mode-000 file is
    unreadable, while root's own files (the interpreter, the weights) stay readable. Threads and
    processes started afterwards inherit it. False where the capset syscall is not known."""
    import ctypes
    import platform

    numbers = {"x86_64": (125, 126), "aarch64": (90, 91)}.get(platform.machine())  # capget, capset
    if numbers is None:
        return False

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two words
    if libc.syscall(numbers[0], ctypes.byref(header), data) != 0:
        return False
    keep = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF  # CAP_DAC_OVERRIDE = 1, CAP_DAC_READ_SEARCH = 2
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    return libc.syscall(numbers[1], ctypes.byref(header), data) == 0


def _verdicts(db: str, good: dict, paths: dict, bad: dict) -> dict:
    """case → what became of it: cached, listed (with the reason), or neither."""
    import json

    from typer.testing import CliRunner

    import faramir.store as store
    from faramir.cli.app import app
    from faramir.store.cache import Cache

    cache = Cache.open(db)
    ids = cache.ids()
    recorded = {r["path"]: r["reason"] for r in store.failures(db)}
    listed = CliRunner().invoke(app, ["failures", "--db", db, "--format", "jsonl"])
    cli_paths = {json.loads(line)["path"] for line in listed.stdout.splitlines() if line.strip()}
    out = {}
    for case, sha in good.items():
        out[case] = "cached" if sha in ids else \
            f"not cached; listed: {recorded[paths[case]]}" if paths[case] in recorded else "not cached, not listed"
    for case, path in bad.items():
        reason = recorded.get(path)
        if reason is None:
            out[case] = "not listed"
        elif "\n" in reason or not reason.strip():
            out[case] = f"listed without a one-line reason: {reason!r}"
        elif path not in cli_paths:
            out[case] = f"recorded, but not in 'faramir failures' (exit {listed.exit_code})"
        else:
            out[case] = f"listed: {reason}"
    return out


def hostile(h) -> dict:
    from tests.hostile import write_hostile_corpus

    folder = h.work / "hostile"
    corpus = write_hostile_corpus(folder / "collection")
    db = folder / "cache.lancedb"
    as_others = os.geteuid() == 0
    run = h.run(_ingest, h.fx["weights"], str(corpus.root), str(db), as_others, name="hostile-ingest",
                timeout=HOSTILE_TIMEOUT_S)
    report = {"run": run.line(), "as": "root without CAP_DAC_OVERRIDE" if as_others else "this user",
              "log": run.log, "alone": False}
    if run.status == "ok":
        result = h.run(_verdicts, str(db), corpus.good, corpus.paths, corpus.bad, name="hostile-verdicts")
        report["cases"] = result.value if result.status == "ok" else {"verdicts": result.line()}
    elif not h.quick:  # which files break the run: each alone
        report["alone"] = True
        report["cases"] = _each_alone(h, folder / "alone", as_others)
    else:
        report["cases"] = {}
    report["rows"] = [{"case": case, "expected": "cached" if case in corpus.good else "listed",
                       "ok": _as_expected(case in corpus.good, verdict), "result": verdict}
                      for case, verdict in report["cases"].items()]
    report["ok"] = run.status == "ok" and all(r["ok"] for r in report["rows"])
    return report


def _as_expected(good: bool, verdict: str) -> bool:
    return verdict == "cached" if good else verdict.startswith("listed: ")


def _each_alone(h, folder: Path, as_others: bool) -> dict:
    """Each file of the collection ingested on its own into its own cache."""
    from tests.hostile import write_hostile_corpus

    corpus = write_hostile_corpus(folder / "all")
    out = {}
    cases = {**corpus.paths, **corpus.bad}
    for i, (case, path) in enumerate(cases.items()):
        alone = folder / f"{i:02d}"
        alone.mkdir()
        top = os.path.relpath(path, corpus.root).split(os.sep)[0]
        os.rename(os.path.join(corpus.root, top), os.path.join(alone, top))
        moved = os.path.join(alone, os.path.relpath(path, corpus.root))
        db = str(alone / "cache.lancedb")
        run = h.run(_ingest, h.fx["weights"], str(alone), db, as_others, name=f"alone-{i}", timeout=ALONE_TIMEOUT_S)
        if run.status != "ok":
            out[case] = f"the run: {run.line()}"
            continue
        good = {case: corpus.good[case]} if case in corpus.good else {}
        verdict = h.run(_verdicts, db, good, {case: moved} if good else {}, {} if good else {case: moved},
                        name=f"alone-verdict-{i}")
        out[case] = verdict.value[case] if verdict.status == "ok" else f"verdict: {verdict.line()}"
    return out


# -- storage faults ------------------------------------------------------------------------------

def _table_state(db: str, table: str) -> dict:
    import lance

    ds = lance.dataset(os.path.join(db, f"{table}.lance"))
    return {"version": ds.version, "previous_rows": ds.checkout_version(ds.version - 1).count_rows()}


def _open_after_truncation(db: str, table: str) -> dict:
    """`faramir stats` on the cache (the first command after the power cut), then the table."""
    from typer.testing import CliRunner

    from faramir.cli.app import app
    from faramir.store.cache import Cache

    result = CliRunner().invoke(app, ["stats", "--db", db])
    ds = Cache.open(db).dataset(table)
    return {"exit": result.exit_code, "stderr": result.stderr, "version": ds.version, "rows": ds.count_rows()}


def truncated_manifest(h, table: str) -> dict:
    from faramir.store.recovery import latest_manifest

    folder, db = h.fresh(f"manifest {table}", new_cache=False)
    before = h.run(_table_state, db, table, name="manifest-before")
    if before.status != "ok":
        return {"fault": "zero-byte latest manifest", "table": table, "ok": False, "detail": before.line()}
    manifest = latest_manifest(Path(db) / f"{table}.lance")
    os.truncate(manifest, 0)
    after = h.run(_open_after_truncation, db, table, name="manifest-after")
    problems = []
    if after.status != "ok":
        problems.append(f"opening: {after.line()} ({after.log})")
    else:
        got, want = after.value, before.value
        warnings = [line for line in got["stderr"].splitlines() if line.startswith("Warning:") and f"{table} table's newest version" in line]
        if got["exit"] != 0:
            problems.append(f"'faramir stats' exit {got['exit']}: {got['stderr'].strip()[-300:]}")
        if len(warnings) != 1:
            problems.append(f"{len(warnings)} warning lines naming {table} (want 1): {got['stderr'].strip()[:300]!r}")
        if (got["version"], got["rows"]) != (want["version"] - 1, want["previous_rows"]):
            problems.append(f"opened at version {got['version']} with {got['rows']} rows; the last good "
                            f"one is {want['version'] - 1} with {want['previous_rows']}")
    problems += _rerun_and_check(h, db)
    return {"fault": "zero-byte latest manifest", "table": table, "ok": not problems,
            "detail": "; ".join(problems) or warnings[0].replace(db, "DB")}


def _rerun_and_check(h, db: str, ingest_more: bool = False) -> list[str]:
    """Ingest the base folder again (restoring a lost commit), then the invariants: a fallback may
    lose the last commit of one table, labels and extra heads included, never more."""
    rerun = h.run(cmds.run_command, h.fx, "ingest", db, not ingest_more, "", name="storage-rerun")
    if rerun.status != "ok":
        return [f"rerun: {rerun.line()} ({rerun.log})"]
    expect = cmds.apply(cmds.initial(h.fx, True), h.fx, "ingest", not ingest_more, "")
    expect["labels"], expect["labels_within"] = None, dict(h.fx["labels1"])
    return h.check(db, expect)


def _mount_tmpfs(path: Path) -> str | None:
    """Mount a small tmpfs at `path`; None, or why it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"mount -t tmpfs not permitted here: {done.stderr.strip() or done.returncode}"
    _mounts.append(path)
    return None


def _fill(path: Path, leave: int) -> Path:
    st = os.statvfs(path)
    ballast = path / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


def disk_full(h) -> dict:
    row = {"fault": "disk full mid-ingest", "table": f"{TMPFS_SIZE} tmpfs", "ok": False, "detail": ""}
    disk = h.work / "tmpfs"
    why = _mount_tmpfs(disk)
    if why is not None:
        return {**row, "ok": None, "detail": f"skipped: {why}"}
    db = str(disk / "cache.lancedb")
    shutil.copytree(h.fx["db"], db)
    ballast = _fill(disk, FREE_BYTES)
    full = h.run(cmds.run_command, h.fx, "ingest", db, False, "", name="disk-full")
    problems = []
    if full.status != "refused" or "\n" in full.message or "space" not in full.message.lower():
        problems.append(f"on a full disk: {full.line()} ({full.log}); want a one-line error about space")
    expect_whole = cmds.initial(h.fx, False)
    partial = [v for v in h.check(db, expect_whole) if v.split(":")[0] not in ("unexpected", "missing")]
    problems += [f"after the error: {v}" for v in partial]  # some of the new images may be in
    ballast.unlink()
    problems += _rerun_and_check(h, db, ingest_more=True)
    return {**row, "ok": not problems, "detail": "; ".join(problems) or f"Error: {full.message.replace(db, 'DB')}"}


def storage(h) -> dict:
    rows = [truncated_manifest(h, table) for table in TABLES]
    rows.append(disk_full(h))
    return {"rows": rows}


def cleanup(h) -> None:
    while _mounts:
        subprocess.run(["umount", "-l", str(_mounts.pop())], capture_output=True, timeout=30)


def print_reports(report: dict, print_table) -> None:
    if "hostile" in report:
        r = report["hostile"]
        title = f"hostile collection: ingest -r as {r['as']}: {r['run']}" + \
            ("; each file then ingested alone" if r["alone"] else "")
        print_table(title, r["rows"])
    if "storage" in report:
        print_table("storage faults", report["storage"]["rows"])
