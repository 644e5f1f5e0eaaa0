"""Thumbnails made from the original files on first request, cached on disk by content id.

Colour handling is preprocessing's (`faramir.preprocess.open_srgb`: an embedded ICC profile
converted to sRGB, transparency premultiplied and composited on black, as the model sees it),
plus the EXIF orientation, which the model ignores but a person expects. A file is used only if
its bytes still hash to the content id: a path whose file changed since ingest shows nothing
else's pixels under this id. Only paths the cache recorded are ever opened (the caller passes
them; nothing here takes a path from a client).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from faramir.files import copy_verified
from faramir.preprocess import open_srgb
from faramir.store.schema import path_from_column

SIZES = {"thumb": 256, "preview": 1024}  # longest side in pixels; never upscaled
QUALITY = 82  # WebP quality: small files, no visible banding at 256 px


def thumbnail_path(root: Path, image_id: str, size: str) -> Path:
    return root / size / image_id[:2] / f"{image_id}.webp"


def render(data: bytes, name: str, longest: int) -> bytes:
    """WebP bytes of the image in `data`, at most `longest` px on its longer side."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (longest, longest))  # decode at a reduced scale: much faster for big JPEGs
        upright = ImageOps.exif_transpose(img)
        for key in ("icc_profile", "transparency"):  # what open_srgb reads, kept through the transpose
            if key in img.info:
                upright.info.setdefault(key, img.info[key])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a broken profile: read as sRGB, as preprocessing does
            rgb = open_srgb(upright, name)
        if rgb.mode != "RGB":
            rgb = rgb.convert("RGB")  # premultiplied RGBa without alpha: composited on black
        rgb.thumbnail((longest, longest), Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        rgb.save(out, "WEBP", quality=QUALITY, method=4)
        return out.getvalue()


def thumbnail(image_id: str, paths: list[str], recorded_size: int, root: Path, size: str = "thumb") -> Path | None:
    """The cached thumbnail of `image_id` (made from the first of `paths` whose bytes still hash to
    it), or None when no recorded path holds that content any more. A file of another size than
    the one recorded is passed over unread (it is not the content, whatever it holds now)."""
    target = thumbnail_path(root, image_id, size)
    if target.is_file():
        return target
    for path in paths:
        data = copy_verified(path_from_column(path), None, image_id, recorded_size)  # as the cache stores it
        if data is None:
            continue  # gone, changed since it was cached, or not a regular file
        try:
            webp = render(data, path, SIZES[size])
        except Exception:  # Pillow raises many types; an undecodable file is like a missing one
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{image_id[:12]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(webp)
        os.replace(tmp, target)  # atomic: a concurrent request sees the whole file or none
        return target
    return None


def placeholder(reason: str) -> str:
    """An SVG tile that says why there is no picture."""
    text = reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
        '<rect width="256" height="256" fill="#1d2026"/>'
        '<path d="M88 104h80v56H88z M100 148l20-24 16 16 12-10 16 18" fill="none" stroke="#5b6170" '
        'stroke-width="4" stroke-linejoin="round"/>'
        f'<text x="128" y="196" fill="#9aa1ad" font-family="sans-serif" font-size="15" '
        f'text-anchor="middle">{text}</text></svg>'
    )
