"""A hostile collection, generated: every kind of file a real folder of artwork can hold that is
not a plain RGB image, and the special files a recursive walk can meet.

`write_hostile_corpus(dest)` returns which files are good (each must end up cached, by content)
and which are bad (each must be listed by `faramir failures` with a one-line reason). Used by
tests/test_chaos.py and tests/chaos/run.py. `spoil_cached` changes cached files as an attacker could
before an export (tests/test_hostile_use.py, tests/test_export_datasets.py, tests/chaos/misuse.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

NON_UTF8_NAME = b"latin1-\xe9t\xe9.png"  # "été" in Latin-1: not valid UTF-8, as old archives hold


@dataclass
class Corpus:
    root: Path
    good: dict[str, str] = field(default_factory=dict)  # case → sha256 of the file's bytes
    bad: dict[str, str] = field(default_factory=dict)  # case → path (str; surrogate-escaped if need be)
    paths: dict[str, str] = field(default_factory=dict)  # good case → path
    unreadable: str | None = None  # the mode-000 file's path (root reads it anyway)


def _noise(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _png_bytes(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A 1-bit PNG claiming width×height pixels (400 M by default: over twice Pillow's bomb limit)
    in a few hundred bytes: Pillow refuses it when it reads the header."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 8)  # a few rows; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _good_images() -> dict[str, tuple[str | bytes, bytes]]:
    """case → (file name, bytes) of every image that must be cached."""
    rgb = Image.fromarray(_noise(40, 30, 1))
    deep = Image.fromarray(_noise(40, 30, 2, 1).astype(np.uint16) * 257)  # mode I;16
    cmyk = Image.fromarray(_noise(40, 30, 3, 4)).convert("CMYK")
    la = Image.fromarray(_noise(40, 30, 4, 1)).convert("LA")
    palette = Image.fromarray(_noise(40, 30, 5)).convert("P")
    frames = [Image.fromarray(_noise(40, 30, 6 + i)).convert("P") for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return {
        "rgb png": ("rgb.png", _png_bytes(rgb)),
        "jpeg": ("photo.jpg", _png_bytes(rgb, format="JPEG", quality=90)),
        "16-bit png": ("deep16.png", _png_bytes(deep)),
        "cmyk jpeg": ("cmyk.jpg", _png_bytes(cmyk, format="JPEG", quality=90)),
        "LA png": ("grey-alpha.png", _png_bytes(la)),
        "palette + transparency": ("palette-alpha.png", _png_bytes(palette, transparency=0)),
        "animated gif": ("animated.gif", animated.getvalue()),
        "exif-rotated jpeg": ("rotated.jpg", _png_bytes(Image.fromarray(_noise(40, 30, 9)), format="JPEG",
                                                        exif=exif.tobytes())),
        "thin 1x1000": ("thin-1x1000.png", _png_bytes(Image.fromarray(_noise(1, 1000, 10)))),
        "thin 1x60000": ("thin-1x60000.png", _png_bytes(Image.fromarray(_noise(1, 60000, 11)))),
        "non-UTF-8 name": (NON_UTF8_NAME, _png_bytes(Image.fromarray(_noise(40, 30, 12)))),
        "newline in name": ("new\nline.png", _png_bytes(Image.fromarray(_noise(40, 30, 13)))),
        "inside a folder named x.png": (os.path.join("folder.png", "inside.png"),
                                        _png_bytes(Image.fromarray(_noise(40, 30, 14)))),
    }


def write_hostile_corpus(dest: str | os.PathLike) -> Corpus:
    """Write the hostile collection into `dest` (a new or empty folder)."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)
    good = _good_images()
    for case, (name, data) in good.items():
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        corpus.good[case] = hashlib.sha256(data).hexdigest()
        corpus.paths[case] = os.fsdecode(path)

    png, jpeg = good["rgb png"][1], good["jpeg"][1]
    bad_files = {
        "truncated png": ("truncated.png", png[: len(png) // 2]),
        "truncated jpeg": ("truncated.jpg", jpeg[: len(jpeg) * 6 // 10]),
        "empty file": ("empty.png", b""),
        "not an image": ("not-an-image.png", b"this is a text file with an image's name\n"),
        "decompression bomb": ("bomb.png", decompression_bomb()),
        "unreadable (mode 000)": ("unreadable.png", _png_bytes(Image.fromarray(_noise(40, 30, 15)))),
    }
    for case, (name, data) in bad_files.items():
        (root / name).write_bytes(data)
        corpus.bad[case] = str(root / name)
    os.chmod(root / "unreadable.png", 0)
    corpus.unreadable = str(root / "unreadable.png")
    os.mkfifo(root / "fifo.png")
    corpus.bad["FIFO"] = str(root / "fifo.png")
    os.symlink("loop.png", root / "loop.png")
    corpus.bad["symlink loop"] = str(root / "loop.png")
    return corpus


SECRET = "root:x:0:0:the system's password file\n"  # what an export must never copy


def spoil_cached(link: Path, other: Path, secret_dir: Path) -> None:
    """What a cached path can hold by export time: `link` replaced by a symlink to a file outside
    the collection (SECRET, written in `secret_dir`), `other` rewritten with other bytes of its
    size (its bytes reversed)."""
    secret = secret_dir / "secret.txt"
    secret.write_text(SECRET)
    link.unlink()
    link.symlink_to(secret)
    other.write_bytes(other.read_bytes()[::-1])
