"""Write a small, varied sample collection of generated artwork-like images (deterministic).

Usage: python scripts/sample_images.py DIR [--count N]
Sizes, modes and formats vary the way a real collection does: large and small, RGB, RGBA,
grey+alpha, palette with transparency, JPEG/PNG/WebP/GIF, and one duplicate and one broken file.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def artwork(rng: np.random.RandomState, w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([
        np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)),
        np.cos(yy * rng.uniform(2, 9) + rng.uniform(0, 6)),
        np.sin((xx + yy) * rng.uniform(2, 9)),
    ], -1)
    img = Image.fromarray(((base * 0.5 + 0.5) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 12)):
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        r = rng.randint(4, max(5, min(w, h) // 3))
        colour = tuple(int(c) for c in rng.randint(0, 256, 3))
        if rng.rand() < 0.5:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
        else:
            draw.polygon([(x0 + r * math.cos(a), y0 + r * math.sin(a))
                          for a in np.linspace(0, 2 * math.pi, rng.randint(3, 7), endpoint=False)], fill=colour)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def write_samples(dest: Path, count: int = 24, seed: int = 0) -> list[Path]:
    rng = np.random.RandomState(seed)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    sizes = [(1920, 1080), (800, 1200), (384, 384), (256, 180), (1024, 1024), (640, 480), (96, 64)]
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        img = artwork(rng, w, h)
        kind = i % 6
        if kind == 0:
            path = dest / f"art_{i:03d}.jpg"
            img.save(path, quality=92)
        elif kind == 1:
            path = dest / f"art_{i:03d}.png"
            alpha = Image.fromarray((np.linspace(0, 255, w)[None, :].repeat(h, 0)).astype(np.uint8))
            img.putalpha(alpha)
            img.save(path)
        elif kind == 2:
            path = dest / f"art_{i:03d}.webp"
            img.save(path, quality=90)
        elif kind == 3:
            path = dest / f"art_{i:03d}.png"
            img.convert("LA").save(path)
        elif kind == 4:
            path = dest / f"art_{i:03d}.png"
            pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
            pal.info["transparency"] = 0
            pal.save(path, transparency=0)
        else:
            path = dest / f"art_{i:03d}.gif"
            img.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        written.append(path)
    shutil.copyfile(written[0], dest / "copy_of_art_000.jpg")  # same content, another name
    (dest / "broken.jpg").write_bytes(written[0].read_bytes()[:2000])  # a truncated file
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--count", type=int, default=24)
    args = parser.parse_args()
    paths = write_samples(args.dest, args.count)
    print(f"{len(paths) + 2} sample files in {args.dest} (one duplicate, one truncated)")
