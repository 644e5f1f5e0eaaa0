"""The feeding side of stage one alone: CPU per image of everything `faramir ingest` does but the experts.

Usage: python bench/feeding.py [--classes clipart,jpeg_2mp,large_4k] [--modes faithful,fast]
                               [--agreement 8] [--device cpu] [--workers N] [--batch-size 8] [--json]

Image classes, real Debian artwork (bench/images.py):

    clipart    200 clip-art PNGs (openclipart-png)
    jpeg_2mp   40 JPEGs of 1-2 MP (quality 90, 4:2:0), made from the wallpapers below: Debian ships
               few photographs of that size
    large_4k   every wallpaper of 8 MP and more: PNG and JPEG (plasma-workspace-wallpapers), WebP
               (gnome-backgrounds)

For each class and decode mode, `faramir.store.ingest` runs into a fresh cache with the experts
replaced by a stand-in that costs next to nothing (`NullExperts`: full-size outputs computed from
each input's mean), so what is measured is the rest: reading, hashing, decoding, colour
management, both resizes, collation, the upload to the device (on CUDA), scoring with the head
and writing to the cache. "CPU ms/image" is process CPU time, this process's and its decode
workers' (getrusage of self and children), which holds up on a busy machine; "images/s/core" is
its inverse. "decode ms" is read + hash + decode + preprocess alone, one image at a time in this
process: what the pipeline adds is the rest; "Pillow ms" is Pillow's full decode alone, which the
faithful decode cannot go below. Files are read once beforehand, so every run finds
them in the page cache.

Agreement (`--agreement N`, 0 skips): N images of each class assessed by the real experts
(full-size generated weights, fp32, on --device) from both decodes, compared as bench/assess.py
compares bf16 with fp32. An image whose two decodes give the same inputs bit for bit (too small to
be reduced) gives the same scores without running the experts; `identical_inputs` counts them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.images import MARKER, package_images  # noqa: E402
from faramir.config import FULL  # noqa: E402
from faramir.experts import ExpertOutputs  # noqa: E402
from faramir.head import FaramirHead  # noqa: E402
from faramir.model import FaramirModel  # noqa: E402
from faramir.reading import read_item  # noqa: E402
from faramir.sources import Source  # noqa: E402
from faramir.weights import WeightsInfo  # noqa: E402

CLASSES = ("clipart", "jpeg_2mp", "large_4k")
MODES = ("faithful", "fast")
LARGE_PIXELS = 8_000_000  # 4K (3840x2160) and larger
JPEG_2MP_SIDE = 1600  # the long side of the made 1-2 MP JPEGs


class NullExperts(torch.nn.Module):
    """The experts' outputs at full size for next to nothing: fixed vectors moved by a sample of
    each image's inputs. Their values mean nothing; the writer and the heads see real shapes."""

    dtype = torch.float32

    def __init__(self, cfg=FULL):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for name, dim in (("faramir", cfg.backbone_dim), ("siglip", cfg.backbone_dim),
                          ("aesthetic", cfg.aesthetic_dim), ("quality", cfg.quality_dim)):
            self.register_buffer(name, torch.randn(2, dim, generator=g))

    def forward(self, xb: torch.Tensor, xq: torch.Tensor) -> ExpertOutputs:
        sample = (xb[:, :, ::32, ::32].float().mean(dim=(1, 2, 3)) + xq[:, :, ::32, ::32].float().mean(dim=(1, 2, 3)))

        def vector(base: torch.Tensor) -> torch.Tensor:
            return base[0] + sample[:, None] * base[1]

        return ExpertOutputs(vector(self.faramir), vector(self.siglip), vector(self.aesthetic), 5 + sample,
                             vector(self.quality))


class NullModel(FaramirModel):
    """A FaramirModel whose experts are `NullExperts`: the batch is uploaded to the device (that is
    feeding), and nothing else is done with it."""

    @torch.inference_mode()
    def features(self, xb: torch.Tensor, xq: torch.Tensor, precision: str | None = None) -> ExpertOutputs:
        return self.experts(xb.to(self.device, non_blocking=True), xq.to(self.device, non_blocking=True))


def null_model(device: torch.device) -> FaramirModel:
    torch.manual_seed(0)
    info = WeightsInfo(weights_dir="(bench stand-in)", config=FULL, generated="bench/feeding.py stand-in experts",
                       experts_fingerprint="0" * 64, pool_fingerprint="1" * 64, head_fingerprint="2" * 64)
    return NullModel(NullExperts(), FaramirHead(FULL), info).eval().to(device)


# -- the image classes ---------------------------------------------------------------------------


def _pixels(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return img.width * img.height
    except Exception:  # noqa: BLE001 - over the bomb limit, or not an image: not a wallpaper here
        return 0


def image_classes(names, cache_dir=None) -> dict[str, list[Path]]:
    wallpapers = [p for pkg in ("plasma-workspace-wallpapers", "gnome-backgrounds")
                  for p in package_images(pkg, cache_dir) if _pixels(p) >= LARGE_PIXELS]
    found = {}
    for name in names:
        if name == "clipart":
            clips = package_images("openclipart-png", cache_dir)
            found[name] = [clips[i] for i in np.random.default_rng(0).permutation(len(clips))[:200]]
        elif name == "large_4k":
            found[name] = wallpapers
        elif name == "jpeg_2mp":
            found[name] = _made_jpegs(wallpapers, 40, cache_dir)
        else:
            raise SystemExit(f"unknown class {name!r}: use {', '.join(CLASSES)}")
        if not found[name]:
            raise SystemExit(f"no images for {name}: bench/images.py could not fetch its packages")
    return found


def _made_jpegs(wallpapers: list[Path], n: int, cache_dir) -> list[Path]:
    """1-2 MP JPEGs from the wallpapers (and their mirror images, when more are needed), made once."""
    dest = _cache_of(cache_dir) / "generated-jpeg-2mp"
    if (dest / MARKER).is_file():
        return sorted(dest.glob("*.jpg"))[:n]
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with Image.open(wallpapers[i % len(wallpapers)]) as img:
            img = img.convert("RGB")
            if i >= len(wallpapers):
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            scale = JPEG_2MP_SIDE / max(img.size)
            img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS) \
                .save(tmp / f"photo{i:03d}.jpg", quality=90)
    (tmp / MARKER).write_text(json.dumps({"made from": "wallpapers of 8 MP and more", "images": n}) + "\n")
    os.replace(tmp, dest)
    return sorted(dest.glob("*.jpg"))[:n]


def _cache_of(cache_dir) -> Path:
    from bench.images import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


# -- measures ------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (decode workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def feed(paths: list[Path], mode: str, model, args) -> dict:
    """One ingest of `paths` into a fresh cache with the stand-in experts: CPU and wall time."""
    from faramir.store.ingestion import ingest_all

    with tempfile.TemporaryDirectory(prefix="faramir-feeding-") as tmp:
        cpu, wall = cpu_seconds(), time.perf_counter()
        s = ingest_all(paths, db=Path(tmp) / "db", model=model, workers=args.workers, batch_size=args.batch_size,
                       decode=mode)
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    done = s.new + s.duplicate
    return {"images": done, "failed": s.failed, "cpu_ms_per_image": cpu / max(done, 1) * 1e3,
            "images_per_s_per_core": done / cpu if cpu else 0.0, "wall_s": wall,
            "waits_s": {k: round(v, 3) for k, v in s.waits.items()}}


def decode_alone(paths: list[Path], mode: str, res: tuple[int, int]) -> dict:
    """CPU ms per image of read + hash + decode + preprocess alone, overall and by file format; and
    of Pillow's full decode alone (`pillow_decode_ms`), what the faithful decode cannot go below."""
    by_format: dict[str, list[float]] = defaultdict(list)
    pillow = []
    for i, path in enumerate(paths):
        started = time.process_time()
        it = read_item(i, Source(str(path), str(path)), None, res, mode)
        spent = (time.process_time() - started) * 1e3
        by_format[it.facts.format if it.facts else "unreadable"].append(spent)
        data = path.read_bytes()
        started = time.process_time()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        pillow.append((time.process_time() - started) * 1e3)
    every = [t for times in by_format.values() for t in times]
    return {"decode_ms_per_image": float(np.mean(every)), "pillow_decode_ms": float(np.mean(pillow)),
            "decode_ms_by_format": {k: round(float(np.mean(v)), 1) for k, v in sorted(by_format.items())}}


def agreement(paths: list[Path], n: int, device: torch.device, weights) -> dict:
    """The fast decode against the faithful one through the real experts (see the module's text)."""
    from bench.assess import agreement as compare
    from faramir.pipeline import Assessment, assess
    from faramir.weights import load_model

    picked = [paths[i] for i in np.random.default_rng(1).permutation(len(paths))[:n]]
    differ, identical = [], 0
    for path in picked:
        a = read_item(0, Source(str(path), str(path)), None, (384, 512), "faithful")
        b = read_item(0, Source(str(path), str(path)), None, (384, 512), "fast")
        if a.xb is None:
            continue
        if np.array_equal(a.xb.view(np.uint16), b.xb.view(np.uint16)) and np.array_equal(a.xq, b.xq):
            identical += 1
        else:
            differ.append(path)
    out = {"agreement_images": identical + len(differ), "identical_inputs": identical}
    if not differ:
        return {**out, "same_decision_fraction": 1.0, "same_label_fraction": 1.0, "max_abs_decision_logit_delta": 0.0}
    model = load_model(weights, device, "fp32")
    sources = [Source(str(p), str(p)) for p in differ]
    faithful = [r for r in assess(model, sources, batch_size=4, workers=0) if isinstance(r, Assessment)]
    fast = [r for r in assess(model, sources, batch_size=4, workers=0, decode="fast") if isinstance(r, Assessment)]
    got = compare(faithful, fast)
    total = out["agreement_images"]
    for key in ("same_decision_fraction", "same_label_fraction"):  # identical inputs agree by construction
        got[key] = (got[key] * len(differ) + identical) / total
    return {**out, **{k: got[k] for k in ("same_decision_fraction", "same_label_fraction",
                                          "max_abs_decision_logit_delta", "median_abs_decision_logit_delta",
                                          "max_abs_logit_delta", "fp32_decision_logit_std")}}


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from faramir.devices import usable_cores

    return f"{name}, {usable_cores()} usable cores"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--agreement", type=int, default=8, help="images per class through the real experts (0: none)")
    ap.add_argument("--weights", default=None, help="full-size weights for --agreement (generated if absent)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the upload to the device is then measured)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: ingest's)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--images", default=None, help="bench/images.py cache (default: its own)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line per class and mode")
    args = ap.parse_args(argv)

    from faramir.devices import resolve_device

    device = resolve_device(args.device)
    classes = image_classes(args.classes.split(","), args.images)
    modes = args.modes.split(",")
    model = null_model(device)
    for paths in classes.values():
        for p in paths:
            Path(p).read_bytes()  # into the page cache, for every mode alike
    feed(classes[next(iter(classes))][:4], "faithful", model, args)  # warm up: imports, first cache
    if not args.json:
        print(f"feeding side of faramir ingest on {machine()}, device {device}, batch {args.batch_size}, "
              f"torch {torch.__version__}")
        print(f"{'class':<10}{'mode':<10}{'images':>7}{'CPU ms/image':>14}{'images/s/core':>15}"
              f"{'decode ms':>11}{'Pillow ms':>11}{'same decision':>15}{'max |Δ logit|':>15}  by format (decode ms)")
    for name, paths in classes.items():
        for mode in modes:
            row = {"class": name, "mode": mode, **feed(paths, mode, model, args),
                   **decode_alone(paths, mode, (384, 512))}
            if mode == "fast" and "faithful" in modes and args.agreement:
                from bench.full_weights import DEFAULT_WEIGHTS, full_weights

                row.update(agreement(paths, args.agreement, device, full_weights(args.weights or DEFAULT_WEIGHTS)))
            row["machine"] = machine()
            print(json.dumps(row) if args.json else _line(row), flush=True)


def _line(r: dict) -> str:
    same = f"{r['same_decision_fraction']:.1%}" if "same_decision_fraction" in r else "-"
    delta = f"{r['max_abs_decision_logit_delta']:.3g}" if "max_abs_decision_logit_delta" in r else "-"
    formats = ", ".join(f"{k} {v}" for k, v in r["decode_ms_by_format"].items())
    return (f"{r['class']:<10}{r['mode']:<10}{r['images']:>7}{r['cpu_ms_per_image']:>14.1f}"
            f"{r['images_per_s_per_core']:>15.1f}{r['decode_ms_per_image']:>11.1f}{r['pillow_decode_ms']:>11.1f}{same:>15}{delta:>15}  {formats}")


if __name__ == "__main__":
    main()
