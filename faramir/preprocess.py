"""Image loading and preprocessing, bit-identical to upstream's `image.py`.

Upstream's steps are kept call for call (the same Pillow calls in the same order give the same
pixels). Where upstream raises, this module goes on instead:

- LA, La, PA and palette-with-transparency images cannot be converted to premultiplied `RGBa`
  directly; they are converted to `RGBA` first.
- `ImageCms.FLAGS` is gone in Pillow 12; the `ImageCms.Flags` enum gives the same numbers.
- A very thin image (1×1000) would be fitted to zero pixels wide; it keeps one pixel a side.

This module imports neither torch nor LanceDB, so decode workers start fast.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms
from PIL.ImageCms import Intent

from faramir.errors import ImageLoadError
from faramir.files import open_regular

_SRGB = ImageCms.createProfile(colorSpace="sRGB")
_HRPC = int(ImageCms.Flags.HIGHRESPRECALC)
_BPC = int(ImageCms.Flags.BLACKPOINTCOMPENSATION)
_INTENT_FLAGS = {
    Intent.PERCEPTUAL: _HRPC,
    Intent.RELATIVE_COLORIMETRIC: _HRPC | _BPC,
    Intent.ABSOLUTE_COLORIMETRIC: _HRPC,
}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ColorProfileWarning(UserWarning):
    """An embedded ICC profile could not be applied; the image was read as sRGB."""


@dataclass(frozen=True)
class ImageFacts:
    width: int  # pixels, as stored (EXIF orientation ignored, as upstream does)
    height: int
    format: str  # Pillow's format name, e.g. "JPEG"
    mode: str  # Pillow's mode of the file, e.g. "RGB", "P", "LA"


def _coalesce_intent(intent: Intent | int) -> Intent:
    return intent if isinstance(intent, Intent) else Intent(int(intent))


def _target_mode(img: Image.Image) -> str:
    if img.mode in _ALPHA_MODES or img.info.get("transparency") is not None:
        return "RGBa"
    return "RGB"


def _apply_icc(img: Image.Image, icc_raw: bytes, mode: str, name: str) -> Image.Image:
    """Upstream's colour management: convert to sRGB, or warn and leave the pixels alone."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_raw))

        if img.info.get("transparency") is not None:
            if img.mode in ("RGB", "RGBX", "BGR", "P") or img.mode.startswith("BGR;"):
                img = img.convert("RGBA")
            elif img.mode in ("1", "L", "I") or img.mode.startswith("I;"):
                img = img.convert("LA")
            else:
                raise ValueError(f"transparency keying unexpected with mode {img.mode}")
        elif img.mode == "P":
            img = img.convert("RGB")
        elif img.mode in ("PA", "RGBa"):
            img = img.convert("RGBA")
        elif img.mode == "La":
            img = img.convert("LA")

        intent = Intent.RELATIVE_COLORIMETRIC
        if ImageCms.isIntentSupported(profile, intent, ImageCms.Direction.INPUT) != 1:
            intent = _coalesce_intent(ImageCms.getDefaultIntent(profile))

        flags = _INTENT_FLAGS.get(intent)
        if flags is None:
            warnings.warn(ColorProfileWarning(f"{name}: unsupported intent {intent}, assuming sRGB"))
        elif img.mode == mode:
            ImageCms.profileToProfile(
                img, profile, _SRGB, renderingIntent=intent, inPlace=True, flags=flags
            )
        else:
            img = ImageCms.profileToProfile(
                img, profile, _SRGB, renderingIntent=intent, outputMode=mode, flags=flags
            )
    except ImageCms.PyCMSError as ex:
        warnings.warn(ColorProfileWarning(f"{name}: {ex}, assuming sRGB"))
    return img


def open_srgb(img: Image.Image, name: str) -> Image.Image:
    """An opened image as `RGB`, or premultiplied `RGBa` when it has any transparency."""
    mode = _target_mode(img)
    icc_raw = img.info.get("icc_profile")
    try:
        if icc_raw is not None:
            img = _apply_icc(img, icc_raw, mode, name)
        if img.mode != mode:
            img = img.convert(mode)
        return img
    except ValueError:
        # Upstream fails here on LA and palette-with-transparency images: take their RGBA
        # conversion instead, the result upstream gives for the same pixels stored as RGBA.
        if mode != "RGBa" or img.mode == "RGBA":
            raise
        rgba = img.convert("RGBA")
        if icc_raw is not None:
            rgba.info["icc_profile"] = icc_raw
        return open_srgb(rgba, name)


def calculate_fit(in_w: int, in_h: int, out_w: int, out_h: int) -> tuple[int, int]:
    """Size that fits inside (out_w, out_h) keeping aspect, never upscaling, and at least one
    pixel a side: upstream rounds a very thin image (1×1000) to zero pixels wide and fails."""
    scale = min(out_w / in_w, out_h / in_h, 1.0)
    return max(1, min(round(in_w * scale), out_w)), max(1, min(round(in_h * scale), out_h))


def calculate_center(in_w: int, in_h: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of an (in_w, in_h) box centred in (out_w, out_h)."""
    assert out_h >= in_h and out_w >= in_w, "the box must fit inside the canvas"
    top = (out_h - in_h) // 2
    left = (out_w - in_w) // 2
    return left, top, left + in_w, top + in_h


# uint8 → float16 in [0, 1], as upstream computes it (the value as float16, then `/= 255.0` in
# float16): the result depends on the byte alone, so a table of the 256 answers, made by that very
# operation, gives the same bits in one gather instead of a conversion and a float16 division.
_TO_UNIT = np.arange(256).astype(np.float16)
_TO_UNIT /= 255.0


def _to_canvas(img: Image.Image, res: int, out: np.ndarray | None = None) -> np.ndarray:
    """Centre `img` on a (3, res, res) float16 zero canvas in [0, 1], written into `out` when given;
    keep RGB only (premultiplied alpha is dropped: composites on black)."""
    left, top, right, bottom = calculate_center(img.width, img.height, res, res)
    canvas = np.empty((3, res, res), dtype=np.float16) if out is None else out
    if (right - left, bottom - top) != (res, res):
        canvas.fill(0)
    pixels = np.asarray(img).transpose((2, 0, 1))[:3]  # (3, h, w) view
    np.take(_TO_UNIT, pixels, out=canvas[:, top:bottom, left:right], mode="clip")  # "clip": unbuffered
    return canvas


def preprocess(img: Image.Image, name: str, backbone_res: int = 384, quality_res: int = 512,
               out: tuple[np.ndarray, np.ndarray] | None = None):
    """(xb, xq) from an opened image: the fitted trunk input and the centre-cropped quality input,
    written into `out` (two float16 arrays of their shapes) when given."""
    img = open_srgb(img, name)

    w, h = calculate_fit(img.width, img.height, backbone_res, backbone_res)
    fitted = img
    if (w, h) != (img.width, img.height):
        fitted = img.resize((w, h), resample=Image.Resampling.LANCZOS, reducing_gap=3.0)

    cropped = img.crop(_crop_box(img.width, img.height, quality_res))

    out_b, out_q = out if out is not None else (None, None)
    return _to_canvas(fitted, backbone_res, out_b), _to_canvas(cropped, quality_res, out_q)


def _crop_box(in_w: int, in_h: int, res: int) -> tuple[int, int, int, int]:
    # Upstream's crop box is the clipped size centred in the *output* square, applied to the
    # image: for a side longer than `res` that is the first `res` pixels (not a centre crop), for
    # a shorter one a window shifted past the edge (Pillow fills it with zeros). Kept as is.
    return calculate_center(min(in_w, res), min(in_h, res), res, res)


def decode(data: bytes, name: str, backbone_res: int = 384, quality_res: int = 512, *,
           out: tuple[np.ndarray, np.ndarray] | None = None, preprocessor=None):
    """(xb, xq, facts) from an image file's bytes, written into `out` when given; raises
    ImageLoadError naming `name`. `preprocessor(img, data, name, backbone_res, quality_res, out)`
    replaces upstream's preprocessing when given (the fast decode's, `faramir.fast_decode`)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            facts = ImageFacts(img.width, img.height, img.format or "", img.mode)
            if preprocessor is None:
                xb, xq = preprocess(img, name, backbone_res, quality_res, out)
            else:
                xb, xq = preprocessor(img, data, name, backbone_res, quality_res, out)
    except ImageLoadError:
        raise
    except Exception as ex:  # Pillow raises many types; each becomes one clear error
        raise ImageLoadError.from_exception(name, ex, size=len(data)) from ex
    return xb, xq, facts


def load_image(path: str | os.PathLike, backbone_res: int = 384, quality_res: int = 512):
    """Upstream's `load_image`: float16 arrays (3, 384, 384) and (3, 512, 512) for one file."""
    name = os.fspath(path)
    try:
        with open_regular(path) as f:
            data = f.read()
    except OSError as ex:
        raise ImageLoadError.from_exception(name, ex) from ex
    xb, xq, _ = decode(data, name, backbone_res, quality_res)
    return xb, xq
