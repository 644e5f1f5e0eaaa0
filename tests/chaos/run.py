"""Fault injection against the cache: kills, races, a hostile collection, hostile use and storage faults,
each followed by a check of the cache's invariants (tests/chaos/invariants.py); prints a table of
trials and violations, then every distinct violation with how often it was seen.

    python -m tests.chaos                  # the full run: >= 100 kills, 20 runs a pair and cache state (~40 min, 2 idle cores)
    python -m tests.chaos --quick          # a few trials of each kind (tests/test_chaos.py runs this)
    python -m tests.chaos --only kill,race --kills 30 --runs 4 --seed 1 --json out.json --keep /tmp/chaos

Scenarios:

  kill     each writing command (ingest into a new cache and into the prepared one, rescore,
           finetune, labels import, index) is SIGKILLed with its decode workers at a moment
           drawn uniformly over its typical duration, then rerun to the end.
  race     every pair of writing commands (ingest, rescore, finetune, labels import, heads rm,
           index; a command with itself too) started together on a new cache and on a copy of
           the prepared one, while readers loop over the queries. In half of the runs the second
           command starts at a random moment during the first instead.
  hostile  `ingest -r` over tests/hostile.py's collection (tests/chaos/faults.py).
  misuse   hostile use of the CLI and the gallery: each case on a copy of the prepared cache, then
           the invariants (tests/chaos/misuse.py).
  storage  a zero-byte latest manifest in each table; the disk filling up mid-ingest (a 20 MB
           tmpfs, mounted when this runs as root; skipped with the reason otherwise).

The commands are the library twins the CLI calls (tests/chaos/commands.py): a `FaramirError` is
the one-line error the CLI prints, anything else the traceback it would show. Tiny generated
weights, small generated images; every process is forked from this one (tests/chaos/forked.py: no
interpreter start per command) and has a timeout. The work folder is removed at the end unless
--keep names one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Everything the children use, imported once here: each child then starts in milliseconds.
import lance  # noqa: E402, F401
import lancedb  # noqa: E402, F401
import torch  # noqa: E402, F401

import faramir.checkpoints  # noqa: E402, F401
import faramir.fake_weights  # noqa: E402, F401
import faramir.finetune  # noqa: E402, F401
import faramir.store.exports  # noqa: E402, F401
import faramir.store.heads.evaluate
import faramir.store.heads.finetune  # noqa: E402, F401
import faramir.store.heads.registry  # noqa: E402, F401
import faramir.store.heads.rescore  # noqa: E402, F401
import faramir.store.ingestion.failures  # noqa: E402, F401
import faramir.store.ingestion.run  # noqa: E402, F401
import faramir.store.labels.files
import faramir.store.labels.table  # noqa: E402, F401
import faramir.store.queries.counting
import faramir.store.queries.ranking  # noqa: E402, F401
import faramir.store.vectors.indexes  # noqa: E402, F401
import faramir.store.vectors.nearest  # noqa: E402, F401
import faramir.weights  # noqa: E402, F401
from tests.chaos import commands as cmds  # noqa: E402
from tests.chaos import faults, forked, invariants, misuse  # noqa: E402

TIMEOUT_S = 300.0  # any one command, check or reader; past it the child is killed ("timeout")
KILL_COMMANDS = ("ingest (new cache)", "ingest", "rescore", "finetune", "labels import", "index")


@dataclass
class Trial:
    """One kill trial or one race run, and what was wrong after it."""

    scenario: str  # kill or race
    name: str  # the command, or the pair
    cache: str  # new or existing
    outcomes: list[str] = field(default_factory=list)  # each process's outcome line
    killed: bool = False  # kill: the kill landed mid-run
    errors: list[str] = field(default_factory=list)  # failed processes (not expected refusals)
    refused: int = 0  # expected refusals
    reader: dict = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    workdir: str = ""


class Harness:
    def __init__(self, work: Path, rng: random.Random, quick: bool = False):
        self.work, self.rng, self.quick = work, rng, quick
        self.fx: dict = {}
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.counter = itertools.count()

    def child(self, fn, *args, name: str, at: float | None = None, timeout: float = TIMEOUT_S) -> forked.Child:
        return forked.start(fn, *args, name=name, workdir=self.work / "logs", timeout=timeout, at=at)

    def run(self, fn, *args, name: str, timeout: float = TIMEOUT_S) -> forked.Outcome:
        return forked.wait(self.child(fn, *args, name=name, timeout=timeout))

    def prepare(self, n_images: int) -> None:
        outcome = self.run(cmds.build_fixture, str(self.work / "fixture"), n_images, max(2, n_images // 2),
                           name="fixture")
        if outcome.status != "ok":
            raise SystemExit(f"preparing the fixture failed: {outcome.line()} (log: {outcome.log})")
        self.fx = outcome.value

    def fresh(self, label: str, new_cache: bool) -> tuple[Path, str]:
        """A trial folder and its cache path: a copy of the prepared cache, or none yet."""
        folder = self.work / "trials" / f"{next(self.counter):04d}-{label.replace(' ', '-').replace('+', '-')}"
        folder.mkdir(parents=True)
        db = folder / "cache.lancedb"
        if not new_cache:
            shutil.copytree(self.fx["db"], db)
        return folder, str(db)

    def check(self, db: str, expect: dict) -> list[str]:
        outcome = self.run(invariants.check, db, expect, name="check")
        return outcome.value if outcome.status == "ok" else [f"check failed: {outcome.line()} ({outcome.log})"]

    def typical(self, key: str) -> float:
        return statistics.median(self.durations[key]) if self.durations[key] else 2.0

    def calibrate(self, keys) -> None:
        """Time each command once, run alone to the end (the kill moments are drawn over this)."""
        for key in keys:
            command, new_cache = _command(key)
            folder, db = self.fresh(f"calibrate {key}", new_cache)
            outcome = self.run(cmds.run_command, self.fx, command, db, new_cache, str(folder / "out.pth"),
                               name=f"calibrate-{command}")
            if outcome.status != "ok":
                raise SystemExit(f"{key} fails when run alone: {outcome.line()} (log: {outcome.log})")
            self.durations[key].append(outcome.elapsed_s)

    # -- kill ----------------------------------------------------------------------------------

    def kill_trial(self, key: str) -> Trial:
        command, new_cache = _command(key)
        folder, db = self.fresh(f"kill {key}", new_cache)
        trial = Trial("kill", key, "new" if new_cache else "existing", workdir=str(folder))
        killed_out, rerun_out = str(folder / "killed.pth"), str(folder / "rerun.pth")
        child = self.child(cmds.run_command, self.fx, command, db, new_cache, killed_out, name=f"kill-{command}")
        deadline = time.monotonic() + self.rng.uniform(0.0, self.typical(key))
        while time.monotonic() < deadline and forked.poll(child) is None:
            time.sleep(0.005)
        first = forked.kill(child)
        trial.killed = first.status == "killed"
        if first.status == "ok":
            self.durations[key].append(first.elapsed_s)
        elif not trial.killed:
            trial.errors.append(f"before the kill: {first.line()} ({first.log})")
        rerun = self.run(cmds.run_command, self.fx, command, db, new_cache, rerun_out, name=f"rerun-{command}")
        trial.outcomes = [first.line(), rerun.line()]
        if rerun.status != "ok":
            trial.errors.append(f"rerun: {rerun.line()} ({rerun.log})")
        expect = cmds.apply(cmds.initial(self.fx, new_cache), self.fx, command, new_cache, rerun_out)
        expect["checkpoints"] = [killed_out, rerun_out] if command == "finetune" else []
        trial.violations = self.check(db, expect)
        return trial

    # -- race ----------------------------------------------------------------------------------

    def race(self, a: str, b: str, new_cache: bool, together: bool, readers: int) -> Trial:
        folder, db = self.fresh(f"race {a}+{b}", new_cache)
        trial = Trial("race", f"{a} + {b}", "new" if new_cache else "existing", workdir=str(folder))
        stop = folder / "stop"
        reading = [self.child(cmds.reader_loop, db, str(stop), new_cache, name="reader") for _ in range(readers)]
        t0 = time.time() + 0.3
        offset = 0.0 if together else self.rng.uniform(0.0, self.typical(_typical_key(a, new_cache)))
        outs = [str(folder / "a.pth"), str(folder / "b.pth")]
        writers = [self.child(cmds.run_command, self.fx, cmd, db, new_cache, out, name=f"race-{cmd}", at=t0 + dt)
                   for cmd, out, dt in ((a, outs[0], 0.0), (b, outs[1], offset))]
        outcomes = [forked.wait(w) for w in writers]
        stop.touch()
        expect = cmds.initial(self.fx, new_cache)
        for (cmd, partner, out), outcome in zip(((a, b, outs[0]), (b, a, outs[1])), outcomes):
            trial.outcomes.append(f"{cmd}: {outcome.line()}")
            if outcome.status == "ok":
                expect = cmds.apply(expect, self.fx, cmd, new_cache, out)
            elif outcome.status == "refused" and cmds.expected_refusal(cmd, new_cache, outcome.error,
                                                                       outcome.message, partner):
                trial.refused += 1
            else:
                trial.errors.append(f"{cmd}: {outcome.line()} ({outcome.log})")
        if a == b == "ingest" and all(o.status == "ok" for o in outcomes):
            counted = sum(o.value["new"] for o in outcomes)
            created = len(expect["images"]) - len(cmds.initial(self.fx, new_cache)["images"])
            if counted != created:
                trial.violations.append(f"count: the two ingests reported {counted} new images for {created}")
        trial.reader = _merge_readers([forked.wait(r) for r in reading], trial)
        trial.violations += self.check(db, expect)
        return trial


def _command(key: str) -> tuple[str, bool]:
    """(command, new cache?) of a kill key such as 'ingest (new cache)'."""
    return (key.removesuffix(" (new cache)"), key.endswith("(new cache)"))


def _typical_key(command: str, new_cache: bool) -> str:
    return "ingest (new cache)" if command == "ingest" and new_cache else command


def _merge_readers(outcomes: list[forked.Outcome], trial: Trial) -> dict:
    merged = {"queries": 0, "refused": 0, "errors": [], "duplicates": [], "gaps": []}
    for outcome in outcomes:
        if outcome.status != "ok":
            trial.errors.append(f"reader: {outcome.line()} ({outcome.log})")
            continue
        for key, value in outcome.value.items():
            merged[key] += value
    trial.errors += [f"reader: {e}" for e in merged["errors"]]
    trial.violations += [f"duplicate: seen by a reader: {d}" for d in merged["duplicates"]]
    return merged


# -- the run -------------------------------------------------------------------------------------

def run_kills(h: Harness, target: int) -> list[Trial]:
    """Round-robin over the commands until each has had its share of mid-run kills (a kill that
    lands after the command ended is a trial too, but not a kill; at most 3x the share)."""
    h.calibrate(KILL_COMMANDS)
    share = -(-target // len(KILL_COMMANDS))
    trials: list[Trial] = []
    for _ in range(3 * share):
        for key in KILL_COMMANDS:
            if sum(t.killed for t in trials if t.name == key) < share:
                trials.append(h.kill_trial(key))
                _progress(trials[-1])
        if all(sum(t.killed for t in trials if t.name == key) >= share for key in KILL_COMMANDS):
            break
    return trials


# The races the test suite runs (--quick): the ones issue 9 met, and writers on separate tables.
QUICK_PAIRS = ("ingest+ingest:new", "ingest+rescore:existing", "rescore+heads rm:existing",
               "finetune+index:existing", "labels import+labels import:existing")


def all_pairs() -> list[tuple[str, str, bool]]:
    return [(a, b, new_cache) for a, b in itertools.combinations_with_replacement(cmds.WRITERS, 2)
            for new_cache in (True, False)]


def parse_pairs(text: str) -> list[tuple[str, str, bool]]:
    """'a+b:new,c+d:existing' → [(a, b, True), (c, d, False)]."""
    pairs = []
    for item in text.split(","):
        names, _, cache = item.strip().partition(":")
        a, _, b = names.partition("+")
        if a not in cmds.WRITERS or b not in cmds.WRITERS or cache not in ("new", "existing"):
            raise SystemExit(f"--pairs: {item!r}: want A+B:new or A+B:existing, A and B among {', '.join(cmds.WRITERS)}")
        pairs.append((a, b, cache == "new"))
    return pairs


def run_races(h: Harness, pairs: list[tuple[str, str, bool]], runs: int, readers: int) -> list[Trial]:
    needed = {_typical_key(a, new_cache) for a, _, new_cache in pairs}
    h.calibrate(sorted(k for k in needed if not h.durations[k]))
    trials = []
    for a, b, new_cache in pairs:
        for i in range(runs):
            trials.append(h.race(a, b, new_cache, together=i % 2 == 0, readers=readers))
            _progress(trials[-1])
    return trials


def _progress(trial: Trial) -> None:
    mark = "ok" if not trial.errors and not trial.violations else \
        f"{len(trial.errors)} errors, {len(trial.violations)} violations"
    print(f"  {trial.scenario} {trial.name} ({trial.cache}): {'killed, ' if trial.killed else ''}{mark}",
          file=sys.stderr, flush=True)


def _kinds(violations: list[str]) -> Counter:
    return Counter(v.split(":", 1)[0] for v in violations)


def kill_table(trials: list[Trial]) -> list[dict]:
    rows = []
    for key in KILL_COMMANDS:
        ts = [t for t in trials if t.name == key]
        if ts:
            rows.append({"command": key, "trials": len(ts), "killed mid-run": sum(t.killed for t in ts),
                         "ended first": sum(not t.killed for t in ts), "errors": sum(len(t.errors) for t in ts),
                         "violations": sum(len(t.violations) for t in ts),
                         "trials with violations": sum(bool(t.violations or t.errors) for t in ts)})
    return rows


def race_table(trials: list[Trial]) -> list[dict]:
    rows = []
    for (name, cache), ts in itertools.groupby(trials, key=lambda t: (t.name, t.cache)):
        ts = list(ts)
        kinds = sum((_kinds(t.violations) for t in ts), Counter())
        rows.append({"pair": name, "cache": cache, "runs": len(ts),
                     "errors": sum(len(t.errors) for t in ts), "expected refusals": sum(t.refused for t in ts),
                     "reader queries": sum(t.reader.get("queries", 0) for t in ts),
                     "duplicates": kinds["duplicate"], "gaps": kinds["gap"],
                     "other violations": sum(kinds.values()) - kinds["duplicate"] - kinds["gap"],
                     "runs with a gap seen by readers": sum(bool(t.reader.get("gaps")) for t in ts)})
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    cols = list(rows[0])
    rows = [{c: _cell(r[c]) for c in cols} for r in rows]
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(r[c].ljust(w) for c, w in zip(cols, widths)).rstrip())


def _cell(value, width: int = 120) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_findings(trials: list[Trial]) -> None:
    """Every distinct error and violation, with the trials it was seen in."""
    seen: dict[str, list[str]] = defaultdict(list)
    example: dict[str, str] = {}
    for t in trials:
        for problem in t.errors + t.violations:
            key = _normalised(problem)
            seen[key].append(f"{t.scenario} {t.name} ({t.cache})")
            example.setdefault(key, problem)
    if not seen:
        return
    print("\nfindings (distinct problems, how often, where; one in full)")
    for problem, where in sorted(seen.items(), key=lambda kv: -len(kv[1])):
        places = Counter(where)
        print(f"  {len(where):4d}x  {problem}")
        print("         in " + "; ".join(f"{p} x{n}" for p, n in places.most_common(6)))
        print(f"         e.g. {example[problem][:400]}")


def _normalised(problem: str) -> str:
    """A problem without its trial-specific parts (log paths, hashes, counts) for grouping."""
    import re

    text = re.sub(r" \(/[^)]*\)$", "", problem)
    text = re.sub(r"[0-9a-f]{12,}", "<id>", text)
    return re.sub(r"\d+", "N", text)[:220]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="6 kills, 1 run a pair, readers 1 (the test suite's run)")
    p.add_argument("--only", default="kill,race,hostile,misuse,storage", help="comma-separated scenarios")
    p.add_argument("--kills", type=int, default=None, help="mid-run kills wanted, over all commands (default 102)")
    p.add_argument("--runs", type=int, default=None, help="runs per pair and cache state (default 20)")
    p.add_argument("--pairs", help="races to run, e.g. 'ingest+ingest:new,ingest+index:existing' "
                                    "(default: every pair on both; quick: a few)")
    p.add_argument("--readers", type=int, default=None, help="reader processes during races (default 2)")
    p.add_argument("--images", type=int, default=None,
                   help="images in the prepared cache (default 16, quick 8); a later ingest adds half as many")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every trial and table here")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (caches, logs)")
    args = p.parse_args(argv)
    kills = args.kills if args.kills is not None else (6 if args.quick else 102)
    runs = args.runs if args.runs is not None else (1 if args.quick else 20)
    readers = args.readers if args.readers is not None else (1 if args.quick else 2)
    n_images = args.images if args.images is not None else (8 if args.quick else 16)
    only = set(args.only.split(","))

    work = args.keep or Path(tempfile.mkdtemp(prefix="faramir-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    h = Harness(work, random.Random(args.seed), quick=args.quick)
    report: dict = {"settings": {"kills": kills, "runs": runs, "readers": readers, "images": n_images,
                                 "seed": args.seed,
                                 "quick": args.quick, "only": sorted(only)}}
    try:
        h.prepare(n_images)
        trials: list[Trial] = []
        if "kill" in only:
            trials += run_kills(h, kills)
            report["kill"] = kill_table([t for t in trials if t.scenario == "kill"])
        if "race" in only:
            pairs = parse_pairs(args.pairs) if args.pairs else \
                parse_pairs(",".join(QUICK_PAIRS)) if args.quick else all_pairs()
            trials += run_races(h, pairs, runs, readers)
            report["race"] = race_table([t for t in trials if t.scenario == "race"])
        if "hostile" in only:
            report["hostile"] = faults.hostile(h)
        if "misuse" in only:
            report["misuse"] = misuse.misuse(h)
        if "storage" in only:
            report["storage"] = faults.storage(h)
        report["trials"] = [asdict(t) for t in trials]
        report["elapsed_s"] = time.monotonic() - started
        if "kill" in report:
            print_table("SIGKILL at a random moment, then rerun", report["kill"])
        if "race" in report:
            print_table("two writers started together, readers looping", report["race"])
        faults.print_reports(report, print_table)
        if "misuse" in report:
            print_table("hostile use of the CLI and the gallery (each on its own copy, then the invariants)",
                        report["misuse"]["rows"])
        print_findings(trials)
        print(f"\n{time.monotonic() - started:.0f} s in all; work folder {work}"
              + ("" if args.keep else " (removed)"))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    finally:
        faults.cleanup(h)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
