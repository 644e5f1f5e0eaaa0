"""The fast decode (`decode="fast"`, `--decode fast`): less pixel work on large images, opt-in.

Upstream's loader converts the whole image to sRGB, then fits it to the trunk's 384×384 and crops
the quality input (its first 512×512 pixels) from it. On a 4K wallpaper the decoding and the
full-size colour conversion are nearly all the cost, while the trunk sees a 384-pixel image.
This module keeps the quality input exact and computes the trunk input from fewer pixels:

- **The quality input is upstream's, bit for bit.** Colour conversion acts pixel by pixel, so it
  commutes with a crop: the crop is taken first and only it is converted. A JPEG's top rows are
  decoded alone, by giving the decoder a copy of the file whose frame header says the image is
  `quality_res + STRIPE_MARGIN` rows tall (libjpeg stops there; the margin keeps the chroma
  upsampling of the last rows kept what the full image gives them).
- **The trunk input is decoded small.** A JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT
  domain (Pillow's `draft`); other images are box-reduced (`Image.reduce`) before anything else.
  Either leaves at least `GAP` times the fitted size, which LANCZOS then resamples as upstream
  does; the colour conversion runs on the reduced image.

An image too small for either (a side within `GAP` times its fitted size: most clip art) is
preprocessed exactly as upstream does. The trunk input of a larger one differs from upstream's by
a resampling: the measured effect on the scores is in docs/performance.md. A cache records which
decode made its vectors (`experts_fingerprint`), so the two are never mixed.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from faramir.preprocess import _crop_box, _to_canvas, calculate_fit, open_srgb, preprocess

GAP = 2.0  # the reduced image keeps at least this many times the fitted size, for LANCZOS
STRIPE_MARGIN = 16  # JPEG rows decoded beyond the quality crop: one MCU row of 4:2:0 chroma
_REDUCE_FIRST = ("RGB", "RGBA", "L", "LA")  # modes Pillow reduces as pixels (alpha premultiplied)
_JPEG_FORMATS = ("JPEG", "MPO")
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def preprocess_fast(img: Image.Image, data: bytes, name: str, backbone_res: int = 384, quality_res: int = 512,
                    out: tuple[np.ndarray, np.ndarray] | None = None):
    """(xb, xq) from an opened image and its file's bytes, written into `out` when given: a
    `preprocessor` of `faramir.preprocess.decode`."""
    w, h = calculate_fit(img.width, img.height, backbone_res, backbone_res)
    factor = int(min(img.width / (w * GAP), img.height / (h * GAP)))  # box reduction that keeps GAP
    if factor < 2:
        return preprocess(img, name, backbone_res, quality_res, out)
    out_b, out_q = out if out is not None else (None, None)
    if img.format in _JPEG_FORMATS:
        stripe = _jpeg_stripe(data, img.height, quality_res + STRIPE_MARGIN)
        if stripe is not None:
            xq = _quality(stripe, img.width, img.height, name, quality_res, out_q)
            img.draft(img.mode, (int(w * GAP), int(h * GAP)))  # before anything loads the full image
            return _to_canvas(_fitted(open_srgb(img, name), w, h), backbone_res, out_b), xq
    if img.mode in _REDUCE_FIRST and img.info.get("transparency") is None:
        xq = _quality(img, img.width, img.height, name, quality_res, out_q)
        small = open_srgb(img.reduce(factor), name)
    else:  # palette, 16-bit, CMYK, keyed transparency: converted at full size first, as upstream
        img = open_srgb(img, name)
        xq = _to_canvas(img.crop(_crop_box(img.width, img.height, quality_res)), quality_res, out_q)
        small = img.reduce(factor)
    return _to_canvas(_fitted(small, w, h), backbone_res, out_b), xq


def _quality(img: Image.Image, width: int, height: int, name: str, res: int, out: np.ndarray | None) -> np.ndarray:
    """The quality input from the top-left of `img` (the whole image, or its first rows), cropped
    by the full image's size and then converted: upstream's pixels, converted pixel by pixel."""
    crop = img.crop(_crop_box(width, height, res))  # keeps img.info: the profile, a transparency key
    return _to_canvas(open_srgb(crop, name), res, out)


def _fitted(img: Image.Image, w: int, h: int) -> Image.Image:
    if img.size == (w, h):
        return img
    return img.resize((w, h), resample=Image.Resampling.LANCZOS, reducing_gap=3.0)


def _jpeg_stripe(data: bytes, height: int, rows: int) -> Image.Image | None:
    """The first `rows` rows of a JPEG, decoded alone (the whole image when it has no more), or
    None when its frame header cannot be found or the decoder refuses the shortened copy."""
    if rows >= height:
        return None
    at = _frame_height_offset(data)
    if at is None or struct.unpack_from(">H", data, at)[0] != height:
        return None
    short = bytearray(data)
    struct.pack_into(">H", short, at, rows)
    try:
        stripe = Image.open(io.BytesIO(bytes(short)))
        stripe.load()
    except Exception:  # noqa: BLE001 - the full decode then says what is wrong with the file
        return None
    return stripe if stripe.height == rows else None


def _frame_height_offset(data: bytes) -> int | None:
    """Where the image height of a JPEG's first frame header (SOFn) is, or None."""
    i, n = 2, len(data)
    if data[:2] != b"\xff\xd8":
        return None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _SOF_MARKERS:
            return i + 5 if i + 9 <= n else None
        if marker == 0xDA:  # a scan before any frame header
            return None
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None
