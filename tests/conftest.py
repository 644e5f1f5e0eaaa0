"""Shared fixtures: a temporary home for the whole session, tiny generated weights (made once per
session) and generated images."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def temporary_home(tmp_path_factory):
    """HOME, the XDG folders, FARAMIR_CACHE and HF_HOME in a temporary folder for every test (and
    every process a test starts), and none of FARAMIR_DB, FARAMIR_WEIGHTS, FARAMIR_WEIGHTS_MIRROR:
    no test reads or writes a user's cache, weights or digest file (tests/test_isolation.py)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        for name, sub in (("XDG_CACHE_HOME", ".cache"), ("XDG_DATA_HOME", ".local/share"),
                          ("XDG_CONFIG_HOME", ".config"), ("FARAMIR_CACHE", ".cache/faramir"),
                          ("HF_HOME", ".cache/huggingface")):
            mp.setenv(name, str(home / sub))
        for name in ("FARAMIR_DB", "FARAMIR_WEIGHTS", "FARAMIR_WEIGHTS_MIRROR"):
            mp.delenv(name, raising=False)
        yield home


def write_images(dest: str | Path, n: int, *, size: tuple[int, int] = (64, 48), fmt: str = "png",
                 seed: int = 0, prefix: str = "img") -> list[Path]:
    """Write `n` distinct images (seeded noise over a gradient) as `dest/{prefix}{i:05d}.{fmt}`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        pixels = np.clip(ramp * rng.random(3) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = dest / f"{prefix}{i:05d}.{fmt}"
        Image.fromarray(pixels, "RGB").save(path, quality=90)  # PNG ignores quality
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights directory of GENERATED tiny weights (seed 0), shared by the session."""
    from faramir.fake_weights import generate

    return Path(generate(tmp_path_factory.mktemp("tiny-weights"), "tiny", 0))


@pytest.fixture
def tiny_model(tiny_weights):
    """A fresh tiny FaramirModel on the CPU (fresh per test: tests may wrap its methods)."""
    from faramir.weights import load_model

    return load_model(tiny_weights)


@pytest.fixture
def make_images():
    """`write_images` as a fixture: make_images(dir, n, size=..., fmt=..., seed=...)."""
    return write_images


def cli(*args) -> str:
    """`faramir ARGS...` in this process (typer's runner), each argument as a string: its stdout,
    once it exited with status 0."""
    from typer.testing import CliRunner

    from faramir.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` copied onto a read-only file system (a tmpfs remounted read-only, as root) or, for
    any other user, made read-only by its permissions; yields the copy."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            yield folder
        finally:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
        return
    mount = Path(tempfile.mkdtemp(prefix="faramir-ro-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs a read-only file system: as root, one that may mount a tmpfs")
    try:
        copy = mount / folder.name
        shutil.copytree(folder, copy)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        yield copy
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        mount.rmdir()
