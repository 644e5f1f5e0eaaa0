"""Functions run in forked children, each bounded in time: the fault harness's process model.

A fresh interpreter spends seconds importing torch and LanceDB (20 s on a loaded 2-core machine),
so a kill "at a random moment" would mostly land in the imports. The harness imports everything
once and never opens a table or runs a tensor op itself; every command, check and reader runs
in a child forked from it. Each child has its own process group (so a kill takes its decode
workers too), its stdout and stderr in a log file, a deadline after which it is killed, and its
outcome back as a small JSON file written atomically. LanceDB restarts its event loop and runtime
in a forked child (an at-fork hook in `lancedb.background_loop`).

Outcomes: ``ok`` (returned), ``refused`` (raised a `FaramirError`: the one-line error the CLI
would print), ``crash`` (any other exception: the CLI would print a traceback), ``killed`` (by
the harness, on purpose), ``timeout`` (past its deadline, then killed) and ``died`` (ended
without an outcome: a signal or an exit from deep inside).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# LanceDB's at-fork hook warns in each child that its fork support is experimental, and Lance warns
# before every fork that it is not fork-safe: both are about a runtime already started, and this
# process never starts one (it opens no table); each child starts its own.
warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
warnings.filterwarnings("ignore", message="lance is not fork-safe")


@dataclass
class Outcome:
    status: str  # ok, refused, crash, killed, timeout, died
    value: object = None  # what the function returned (ok)
    error: str = ""  # exception class name (refused, crash)
    message: str = ""  # its one-line message, or the last traceback line
    elapsed_s: float = 0.0
    log: str = ""  # the child's output file

    def line(self) -> str:
        return f"{self.status}: {self.error}: {self.message}" if self.error else self.status


@dataclass
class Child:
    pid: int
    name: str
    log: Path
    result: Path
    started: float
    deadline: float
    outcome: Outcome | None = field(default=None)


def start(fn, *args, name: str, workdir: Path, timeout: float, at: float | None = None) -> Child:
    """Fork a child running fn(*args) (at wall-clock time `at`, if given); return at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace(' ', '-')}-{time.monotonic_ns()}"
    log, result = workdir / f"{stem}.log", workdir / f"{stem}.json"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _run_child(fn, args, log, result, at)
    try:
        os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race with a kill
    except OSError:
        pass
    now = time.monotonic()
    return Child(pid, name, log, result, now, now + timeout + max(0.0, (at or 0) - time.time()))


def _run_child(fn, args, log: Path, result: Path, at: float | None) -> None:
    code = 70
    try:
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        if at is not None:
            time.sleep(max(0.0, at - time.time()))
        started = time.monotonic()
        try:
            outcome = {"status": "ok", "value": fn(*args)}
            code = 0
        except BaseException as ex:  # noqa: BLE001 - classify everything, like the CLI would
            from faramir.errors import FaramirError

            traceback.print_exc()
            text = str(ex).strip().splitlines()
            refused = isinstance(ex, FaramirError)
            outcome = {"status": "refused" if refused else "crash", "error": type(ex).__name__,
                       "message": text[0] if refused and text else (text[-1] if text else "")}
            code = 1 if refused else 2
        outcome["elapsed_s"] = time.monotonic() - started
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(outcome, default=str))
        os.replace(tmp, result)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(child: Child, status: int, killed: bool) -> Outcome:
    elapsed = time.monotonic() - child.started
    if child.result.exists():
        data = json.loads(child.result.read_text())
        outcome = Outcome(**{k: data[k] for k in ("status", "value", "error", "message") if k in data},
                          elapsed_s=data.get("elapsed_s", elapsed))
    elif killed:
        outcome = Outcome("killed", elapsed_s=elapsed)
    else:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        outcome = Outcome("died", message=f"signal {sig}" if sig else f"exit {os.waitstatus_to_exitcode(status)}",
                          elapsed_s=elapsed)
    outcome.log = str(child.log)
    child.outcome = outcome
    return outcome


def poll(child: Child) -> Outcome | None:
    """The outcome if the child has ended (a child past its deadline is killed: ``timeout``)."""
    if child.outcome is not None:
        return child.outcome
    pid, status = os.waitpid(child.pid, os.WNOHANG)
    if pid:
        return _reap(child, status, killed=False)
    if time.monotonic() > child.deadline:
        kill(child)
        child.outcome = Outcome("timeout", message=f"still running after {child.deadline - child.started:.0f} s",
                                elapsed_s=time.monotonic() - child.started, log=str(child.log))
        return child.outcome
    return None


def wait(child: Child) -> Outcome:
    while (outcome := poll(child)) is None:
        time.sleep(0.01)
    return outcome


def kill(child: Child) -> Outcome:
    """SIGKILL the child's process group; its outcome is ``killed`` unless it had already ended."""
    if child.outcome is not None:
        return child.outcome
    for target in (lambda: os.killpg(child.pid, signal.SIGKILL), lambda: os.kill(child.pid, signal.SIGKILL)):
        try:
            target()
            break
        except ProcessLookupError:
            continue
    _, status = os.waitpid(child.pid, 0)
    return _reap(child, status, killed=True)


def run(fn, *args, name: str, workdir: Path, timeout: float) -> Outcome:
    """fn(*args) in a child, to the end (or its deadline)."""
    return wait(start(fn, *args, name=name, workdir=workdir, timeout=timeout))
