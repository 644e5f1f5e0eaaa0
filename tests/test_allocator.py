"""faramir.cli.allocator: glibc's malloc tuned for Lance's batch reads, unless the user chose otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = "from faramir.cli.allocator import keep_freed_memory as k; print(k(), k())"


def _probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the settings are glibc's")
def test_applied_once_on_glibc_unless_the_environment_sets_malloc():
    assert _probe() == "True True"  # applied, and a second call reports the same
    assert _probe(MALLOC_ARENA_MAX="4") == "False False"  # the user's setting stands


def test_the_faramir_command_applies_it_before_any_command_runs():
    out = subprocess.run([sys.executable, "-c", "import faramir.cli.app, faramir.cli.allocator as a; print(a._applied)"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" \
        and not any(k in os.environ for k in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                                              "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"))
    assert out.stdout.strip() == str(expected)
