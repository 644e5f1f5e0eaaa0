"""Thumbnails: preprocessing's colour handling (ICC to sRGB, alpha on black) plus EXIF orientation,
at most 256 px, WebP, cached by content id; a changed or missing original gives none."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faramir.gallery.thumbnails import placeholder, render, thumbnail, thumbnail_path
from tests.parity import PARITY, needs_parity


def _png(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **kw)
    return out.getvalue()


def _decoded(webp: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(webp))
    assert img.format == "WEBP"
    return img.convert("RGB")


def test_at_most_256_px_keeping_aspect_and_never_upscaled():
    big = Image.new("RGB", (1000, 500), (200, 30, 30))
    assert _decoded(render(_png(big), "big.png", 256)).size == (256, 128)
    small = Image.new("RGB", (40, 30), (10, 200, 10))
    assert _decoded(render(_png(small), "small.png", 256)).size == (40, 30)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 60), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 60, 60))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif, quality=95)
    thumb = _decoded(render(out.getvalue(), "rotated.jpg", 256))
    assert thumb.size == (60, 120)
    top, bottom = np.asarray(thumb)[10, 30], np.asarray(thumb)[110, 30]
    assert top[0] > 200 and top[2] < 60  # the red half is on top once rotated
    assert bottom[2] > 200 and bottom[0] < 60


def test_alpha_is_composited_on_black_as_the_model_sees_it():
    img = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    img.paste((255, 255, 255, 255), (0, 0, 32, 64))
    pixels = np.asarray(_decoded(render(_png(img), "alpha.png", 256)))
    assert pixels[32, 10].min() > 240 and pixels[32, 50].max() < 15


@needs_parity
def test_profiled_images_get_preprocessings_colours():
    """The parity fixtures with an Adobe RGB profile (one with alpha, whose profile Pillow cannot
    build a transform for: read as sRGB, as preprocessing does, then composited on black)."""
    import warnings

    from faramir.preprocess import open_srgb

    def coarse(img):  # colour, not detail: WebP's chroma subsampling and JPEG draft decoding differ there
        return np.asarray(img.convert("RGB").resize((16, 12), Image.Resampling.BOX)).astype(int)

    for name in ("icc_adobergb.jpg", "icc_adobergb_rgba.png"):
        data = (PARITY / "images" / name).read_bytes()
        with Image.open(io.BytesIO(data)) as img, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            want = coarse(open_srgb(img, name))
            naive = coarse(img)
        got = coarse(_decoded(render(data, name, 256)))
        assert np.abs(got - want).mean() < 2.0 and np.abs(got - want).max() <= 8, name
        if img.mode == "RGBA":
            assert np.abs(got - naive).mean() > 2.5  # transparency went to black, not dropped


def test_cached_by_content_id_and_refused_when_the_file_changed(tmp_path):
    path = tmp_path / "a.png"
    data = _png(Image.new("RGB", (300, 200), (90, 90, 200)))
    path.write_bytes(data)
    image_id = hashlib.sha256(data).hexdigest()
    root = tmp_path / "thumbs"
    made = thumbnail(image_id, [str(tmp_path / "missing.png"), str(path)], len(data), root)
    assert made == thumbnail_path(root, image_id, "thumb") and made.is_file()
    assert _decoded(made.read_bytes()).size == (256, 171)
    made.unlink()
    other = _png(Image.new("RGB", (300, 200), (200, 0, 0)))
    path.write_bytes(other)  # same path, other content
    assert thumbnail(image_id, [str(path)], len(data), root) is None
    assert thumbnail(image_id, [str(path)], len(other), root) is None  # the size matches, the hash does not
    assert thumbnail(image_id, [str(tmp_path / "gone.png")], len(data), root) is None


def _bytes_read() -> int:
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts the bytes read through /proc/self/io (Linux)")
def test_a_cached_path_that_now_holds_a_huge_file_is_not_read(tmp_path):
    path = tmp_path / "a.png"
    data = _png(Image.new("RGB", (300, 200), (90, 90, 200)))
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB (sparse) where the 2 KB image was
    before = _bytes_read()
    for _ in range(3):  # nor again on every request
        assert thumbnail(hashlib.sha256(data).hexdigest(), [str(path)], len(data), tmp_path / "thumbs") is None
    assert _bytes_read() - before < 1 << 20


    assert "original missing" in placeholder("original missing") and "<svg" in placeholder("x")
