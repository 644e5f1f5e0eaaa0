"""The installed package: a wheel of the repository holds one top-level import name, `faramir`
(the design card's folders faramir/, store/, cli/ and gallery/ as faramir, faramir.store,
faramir.cli and faramir.gallery), every module of those folders, the gallery's static files and
the `faramir` command; installed into a fresh virtual environment, it adds exactly that."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"faramir": "faramir", "store": "faramir/store", "cli": "faramir/cli", "gallery": "faramir/gallery"}
STATIC = ("index.html", "app.js", "app.css")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (a build writes build/ and *.egg-info beside them)."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in this environment")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in (*FOLDERS, "pyproject.toml", "README.md"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    (found,) = out.glob("faramir-*.whl")
    return found


def test_the_wheel_holds_one_package_every_module_and_the_pages_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"faramir", f"{wheel.name.split('-py')[0]}.dist-info"}
    modules = {f"{FOLDERS[folder]}/{p.relative_to(REPO / folder).as_posix()}"
               for folder in FOLDERS for p in (REPO / folder).rglob("*.py")}
    assert modules - set(names) == set()  # every sub-package listed in pyproject.toml
    assert {f"faramir/gallery/static/{f}" for f in STATIC} <= set(names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "faramir = faramir.cli.app:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_into_a_fresh_environment_it_adds_one_top_level_name(wheel, tmp_path):
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    before = {p.name for p in site.iterdir()}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True)
    added = {p.name for p in site.iterdir()} - before
    assert {n for n in added if not n.endswith(".dist-info")} == {"faramir"}
    assert (env / "bin" / "faramir").is_file()
    static = site / "faramir" / "gallery" / "static"
    assert all((static / f).is_file() for f in STATIC)
