"""Opening a cache whose newest table version a power cut broke.

Lance commits a version by writing its manifest to a temporary file and linking it into
``_versions/``, so no reader ever sees half a manifest while a writer runs; but nothing is
fsynced. After a power cut on a local disk the newest manifest can be there with zero bytes (or
cut short), and Lance then cannot open the table at any version. `recover` runs whenever a local
cache is opened: for each table it checks the newest manifest (a stat and a 4-byte read: every
Lance manifest ends with the magic ``LANC``), moves a broken one aside into
``<table>.lance/_broken_versions/``, and so the table opens at its newest whole version. Each
table recovered gives one line, returned for the caller to warn with.

Only the manifest is checked: a data file the power cut truncated shows up when it is read.
"""

from __future__ import annotations

import os
from pathlib import Path

from faramir.store.errors import CacheError

MAGIC = b"LANC"  # the last four bytes of every Lance manifest
MIN_MANIFEST = 16  # its fixed footer: metadata position, format version, magic
BROKEN_DIR = "_broken_versions"
_U64_MAX = 2**64 - 1


def manifest_version(name: str) -> int | None:
    """The version a ``_versions/`` file name holds, or None for anything but a manifest. Lance's
    V2 naming writes u64::MAX - version in 20 digits (so the newest sorts first); V1 the version."""
    stem = name[: -len(".manifest")] if name.endswith(".manifest") else ""
    if not stem.isdigit():
        return None
    return _U64_MAX - int(stem) if len(stem) == 20 else int(stem)


def manifests(table_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(version, manifest path) of a table, newest first."""
    versions = Path(table_dir) / "_versions"
    try:
        names = os.listdir(versions)
    except FileNotFoundError:
        return []
    found = [(v, versions / n) for n in names if (v := manifest_version(n)) is not None]
    return sorted(found, reverse=True)


def latest_manifest(table_dir: str | os.PathLike) -> Path | None:
    found = manifests(table_dir)
    return found[0][1] if found else None


def is_whole(manifest: Path) -> bool:
    """Whether a manifest file is complete: long enough, and ending with Lance's magic."""
    try:
        with open(manifest, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < MIN_MANIFEST:
                return False
            f.seek(-len(MAGIC), os.SEEK_END)
            return f.read(len(MAGIC)) == MAGIC
    except FileNotFoundError:  # moved aside by another process recovering the same table
        return True


def recover_table(table_dir: Path) -> str | None:
    """Move the table's broken newest manifests aside; one line saying so, or None if whole."""
    moved = []
    for version, manifest in manifests(table_dir):
        if is_whole(manifest):
            break
        aside = table_dir / BROKEN_DIR
        aside.mkdir(exist_ok=True)
        try:
            os.replace(manifest, aside / manifest.name)
        except FileNotFoundError:
            pass  # another process moved it first
        moved.append(version)
    else:
        if moved:
            raise CacheError(f"{table_dir}: no version of this table is readable (every manifest is "
                             f"cut short; moved to {BROKEN_DIR}/); restore the cache from a copy")
    if not moved:
        return None
    name = table_dir.name.removesuffix(".lance")
    newest = ", ".join(str(v) for v in moved)
    return (f"{table_dir.parent}: the {name} table's newest version {newest} was cut short, as a power "
            f"cut can leave it; opened at version {version}, the newest whole one (the broken manifest "
            f"is in {name}.lance/{BROKEN_DIR}/); if a command was writing then, run it again")


def recover(uri: str) -> list[str]:
    """Recover every table of the local cache at `uri`; a line for each one recovered."""
    try:
        tables = sorted(e.path for e in os.scandir(uri) if e.name.endswith(".lance") and e.is_dir())
    except FileNotFoundError:
        return []
    return [line for t in tables if (line := recover_table(Path(t))) is not None]
