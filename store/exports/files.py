"""Writing an export as image files in a folder (copied, hard-linked or symlinked; optionally one
subfolder per label), never over a file already there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from faramir.files import sha256_file
from faramir.store.schema import path_from_column

if TYPE_CHECKING:
    from faramir.store.exports import ExportResult


def write_files(batches, dest: Path, link: str, by_label: bool, result: ExportResult, progress) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for total, table in batches:
        for row in table.select(["id", "paths", "label", "size"]).to_pylist():
            result.rows += 1
            source = next((path_from_column(p) for p in row["paths"] or () if os.path.isfile(path_from_column(p))),
                          None)
            if source is None:
                result.missing.append((row["paths"] or ["(no path)"])[0])
            else:
                folder = dest / row["label"] if by_label else dest
                folder.mkdir(exist_ok=True)
                status = _place(source, folder, row["id"], link)
                if status == "written":
                    result.written += 1
                elif status == "present":
                    result.present += 1
                else:
                    result.clashes.append(status)
            if progress is not None:
                progress(result.rows, total)


def _place(source: str, folder: Path, image_id: str, link: str) -> str:
    """Put `source` into `folder` without overwriting: "written", "present" or the clashing path."""
    name = Path(source).name
    stem, ext = os.path.splitext(name)
    for candidate in (folder / name, folder / f"{stem}.{image_id[:12]}{ext}"):
        try:
            _create(source, candidate, link)
            return "written"
        except FileExistsError:
            if _same_content(candidate, source, image_id):
                return "present"
    return str(folder / name)


def _create(source: str, target: Path, link: str) -> None:
    """Create `target` from `source`; FileExistsError if the name is taken (never replaced)."""
    if link == "hardlink":
        os.link(source, target)
    elif link == "symlink":
        os.symlink(os.path.abspath(source), target)
    else:
        with open(source, "rb") as src, open(target, "xb") as out:
            try:
                shutil.copyfileobj(src, out, 1 << 20)
            except BaseException:
                out.close()
                target.unlink(missing_ok=True)
                raise
        shutil.copystat(source, target)


def _same_content(target: Path, source: str, image_id: str) -> bool:
    try:
        if os.path.samefile(target, source):
            return True
        if target.stat().st_size != os.stat(source).st_size:
            return False
        return sha256_file(target) == image_id
    except OSError:
        return False
