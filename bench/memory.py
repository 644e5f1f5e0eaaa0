"""Peak memory of this process, for the benchmark tables."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """Peak resident set of this process, in MB.

    On Linux, VmHWM: the high-water mark of this address space, which starts afresh at exec.
    `getrusage().ru_maxrss` does not: Linux carries it across fork and exec, so a child that a
    large parent started reports the parent's peak (a bench measuring in fresh processes would
    print its builder's memory for every operation)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return _maxrss_mb(resource.RUSAGE_SELF)


def children_peak_rss_mb() -> float:
    """Peak resident set of the largest finished child process, in MB (`ru_maxrss`: a forked
    child's includes the pages it shares with its parent)."""
    return _maxrss_mb(resource.RUSAGE_CHILDREN)


def _maxrss_mb(who: int) -> float:
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, else kB
    return resource.getrusage(who).ru_maxrss * scale
