"""Writing an export as image files in a folder (copied, hard-linked or symlinked; optionally one
subfolder per label), never over a file already there, and only bytes that are still the cached
content.

A cached path may hold something else by now: an edited image, another file moved there, a
symlink to a file outside the collection. So a file goes out only if its bytes hash to the row's
content id, hashed while they are copied (a copy is written beside its final name and linked into
place only once its hash matched); a link is made only to a file that hashed so just before. A
file of another size than the one recorded is passed over unread. A row none of whose paths holds
its content any more is skipped and reported (`ExportResult.changed`, or `missing` when none of
them exists).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from faramir.files import copy_verified
from faramir.store.schema import path_from_column

if TYPE_CHECKING:
    from faramir.store.exports import ExportResult


def write_files(batches, dest: Path, link: str, by_label: bool, result: ExportResult, progress) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for total, table in batches:
        for row in table.select(["id", "paths", "label", "size"]).to_pylist():
            result.rows += 1
            folder = dest / row["label"] if by_label else dest
            paths = [path_from_column(p) for p in row["paths"] or ()]
            status = _export_one(paths, folder, row["id"], row["size"], link)
            if status == "written":
                result.written += 1
            elif status == "present":
                result.present += 1
            elif status == "changed":
                result.changed.append((row["paths"] or ["(no path)"])[0])
            elif status == "missing":
                result.missing.append((row["paths"] or ["(no path)"])[0])
            else:
                result.clashes.append(status)
            if progress is not None:
                progress(result.rows, total)


def _export_one(paths: list[str], folder: Path, image_id: str, size: int, link: str) -> str:
    """Put the first of `paths` that still holds the content into `folder`: "written", "present",
    the clashing path, "changed" (none holds it) or "missing" (none exists)."""
    if not any(os.path.lexists(p) for p in paths):
        return "missing"
    for source in paths:
        folder.mkdir(exist_ok=True)
        name = Path(source).name
        if link != "copy":
            if copy_verified(source, _Discard(), image_id, size) is not None:
                return _place(Path(source), name, folder, image_id, size, link)
        elif _held(folder, name, image_id, size):  # exported before (a rerun): verified, not copied again
            if copy_verified(source, _Discard(), image_id, size) is not None:
                return "present"
        else:
            staged = folder / f".{image_id[:12]}.{secrets.token_hex(4)}.part"
            try:
                with open(staged, "xb") as out:
                    good = copy_verified(source, out, image_id, size) is not None
                if good:
                    shutil.copystat(source, staged)
                    return _place(staged, name, folder, image_id, size, link)
            finally:
                staged.unlink(missing_ok=True)
    return "changed"


class _Discard:
    """A sink for hashing a file without keeping its bytes."""

    def write(self, data: bytes) -> int:
        return len(data)


def _names(folder: Path, name: str, image_id: str) -> tuple[Path, Path]:
    """Where an image goes in `folder`: under its own name, or beside a file of another content
    that holds that name, under its name with its id's first 12 digits."""
    stem, ext = os.path.splitext(name)
    return folder / name, folder / f"{stem}.{image_id[:12]}{ext}"


def _held(folder: Path, name: str, image_id: str, size: int) -> bool:
    """Whether `_place` would find this content already in `folder` (the first of its names that
    is free or holds the content holds it)."""
    for candidate in _names(folder, name, image_id):
        if not os.path.lexists(candidate):
            return False
        if _same_content(candidate, image_id, size):
            return True
    return False


def _place(source: Path, name: str, folder: Path, image_id: str, size: int, link: str) -> str:
    """Link `source` (a verified copy, or the original) into `folder` as `name` without overwriting:
    "written", "present" or the clashing path."""
    for candidate in _names(folder, name, image_id):
        try:
            if link == "symlink":
                os.symlink(os.path.abspath(source), candidate)
            else:  # a hard link: of the verified copy, or of the original
                os.link(source, candidate)
            return "written"
        except FileExistsError:
            if _same_content(candidate, image_id, size, source if link != "copy" else None):
                return "present"
    return str(folder / name)


def _same_content(target: Path, image_id: str, size: int, verified: Path | None = None) -> bool:
    """Whether `target` holds the content `image_id` of `size` bytes: it is the file `verified`
    (a link to the source just verified), or its bytes hash to the id (another size: not read)."""
    try:
        if verified is not None and os.path.samefile(target, verified):
            return True
    except OSError:
        return False
    return copy_verified(target, _Discard(), image_id, size) is not None
