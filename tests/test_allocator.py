"""faramir.cli.allocator: glibc's malloc tuned for Lance's batch reads by `faramir rescore` alone, unless
the user chose otherwise."""

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


INVOKE = ("from typer.testing import CliRunner; from faramir.cli.app import app; "
          "import faramir.cli.allocator as a; CliRunner().invoke(app, {args!r}); print(a._applied)")


@pytest.mark.parametrize("args, applied", [
    (["rescore", "--head", "h.pth", "--name", "n", "--db", "no-cache-here"], True),  # reads every embedding
    (["top", "--db", "no-cache-here"], None),  # any other command leaves the allocator alone
])
def test_only_faramir_rescore_changes_the_allocator(args, applied):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", INVOKE.format(args=args)], cwd=REPO, env=clean,
                         capture_output=True, text=True, check=True)
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == str(applied if glibc or applied is None else False)
