"""The C allocator's settings for bulk columnar reads (glibc; elsewhere there is nothing to do),
for the one command shown to gain from them: `faramir rescore` reads every row's embeddings.

Lance decodes every batch into freshly allocated buffers, on its own threads. With glibc's
defaults a buffer that large is mmap'd and unmapped again, or comes from a thread's own arena,
whose freed memory goes back to the kernel, so every batch page-faults its memory in anew. With
one arena that keeps freed memory for reuse, a rescore of a million rows from their embeddings
took 3.9-5.5 s instead of 6.8-6.9 s, at a lower peak RSS (`bench/stage_two.py`, which measures
both; docs/performance.md). What is kept is bounded by the trim threshold: 512 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

SETTINGS = (
    (_M_ARENA_MAX, 1),  # every thread allocates from the main heap, where the thresholds below hold
    (_M_MMAP_THRESHOLD, 256 << 20),  # batch buffers come from the heap, not a fresh mmap each
    (_M_TRIM_THRESHOLD, 512 << 20),  # freed memory stays for the next batch (up to 512 MB)...
    (_M_TOP_PAD, 256 << 20),  # ...and the heap grows in steps of 256 MB, not page by page
)
USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for Lance's batch reads (see the module docstring); True if applied.

    Process-wide, and only threads that have not allocated yet follow it: call it before LanceDB,
    Lance or torch start their threads (`faramir rescore` does, first thing). Nothing is changed
    off glibc or when the environment sets any of `USER_SETTINGS`: the user's choice stands."""
    global _applied
    if _applied is None:
        _applied = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" \
                and not any(name in os.environ for name in USER_SETTINGS):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _applied = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
    return _applied
