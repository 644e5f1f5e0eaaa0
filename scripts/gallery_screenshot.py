"""Make the README's gallery screenshot (docs/gallery.png) in Debian's headless Chromium.

    python scripts/gallery_screenshot.py [--images DIR] [--out docs/gallery.png]

Ingests the images under DIR (for example artwork unpacked from Debian's desktop-base and
plasma-workspace-wallpapers packages, or `bench/images.py`'s cache) plus generated shapes and
gradients into a temporary cache with GENERATED tiny weights (scores mean nothing: the
screenshot shows the page, not a model), labels a few images, opens the gallery with one
image's details and saves the page.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shapes(dest: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` generated pictures: soft gradients with a few shapes on them."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = 640, 480
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, math.pi)
        t = np.clip((np.cos(angle) * xx + np.sin(angle) * yy) * 1.2, 0, 1)[..., None]
        img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img, "RGBA")
        for _ in range(int(rng.integers(2, 6))):
            colour = tuple(int(c) for c in rng.uniform(0, 255, 3)) + (int(rng.uniform(120, 230)),)
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(30, 160)
            kind = rng.integers(0, 3)
            if kind == 0:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
            elif kind == 1:
                draw.rectangle((x - r, y - r / 2, x + r, y + r / 2), fill=colour)
            else:
                draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
        path = dest / f"shape{i:03d}.png"
        img.save(path)
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, help="a folder of real images to include (searched recursively)")
    parser.add_argument("--limit", type=int, default=40, help="at most this many images from --images")
    parser.add_argument("--shapes", type=int, default=24, help="generated pictures to add")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from faramir.fake_weights import generate
    from faramir.gallery.app import create_app
    from faramir.store.ingestion import ingest_all
    from faramir.store.labels.table import set_labels
    from faramir.store.queries.ranking import top
    from tests.gallery_helpers import CHROMIUM, CHROMIUM_ARGS, running, spread_head

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = Path(generate(root / "weights", "tiny", 0))
        files = shapes(root / "shapes", args.shapes)
        if args.images:
            real = sorted(p for p in args.images.rglob("*")
                          if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and p.stat().st_size > 20_000)
            files += real[: args.limit]
        db = root / "db"
        ingest_all(files, db=db, weights_dir=weights, device="cpu", workers=0, batch_size=8)
        head = spread_head(db, weights, "curated")
        ids = top(db, head=head, limit=None).column("id").to_pylist()
        set_labels(ids[1:4], "accept", db)
        set_labels(ids[-3:], "reject", db)
        set_labels(ids[6:7], "2d_fantasy", db)
        app = create_app(db, work=root / "work")
        with running(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{url}/?head={head}&t=0.55")
            page.wait_for_selector("#grid .tile")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("Enter")
            page.wait_for_selector("#logits .logit-row")
            page.keyboard.press("Shift+ArrowDown")
            page.wait_for_timeout(300)
            page.evaluate("() => Promise.all([...document.images].map(i => i.complete ? 0 : "
                          "new Promise(r => { i.onload = i.onerror = r; })))")
            page.wait_for_timeout(500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
