"""Real artwork images for benchmarks, taken from Debian packages and cached locally.

The packages (wallpapers, desktop artwork, clip art) are fetched with `apt-get download` and
unpacked with `dpkg -x`; only raster images Pillow reads are kept (png, jpg/jpeg, webp, gif; never
svg), under `<cache>/<package>/<path inside the package>`. A package directory appears only once
complete (unpacked beside it, then renamed), so a crashed run leaves no half-filled package and the
next run simply redoes it. Once cached nothing is downloaded again.

    python bench/images.py [--dir DIR]            fill the cache if needed, print counts and bytes
    python bench/images.py [--dir DIR] --count    print counts and bytes of what is cached (no apt)
    python bench/images.py [--dir DIR] --stats    also the distribution of image sizes and modes

From code: `bench_images(n=None, cache_dir=None, seed=0)` → a deterministic list of paths (sorted,
then shuffled with `seed`, then the first `n`) over `PACKAGES`; `package_images(package)` → the
sorted images of one package, `PACKAGES` or another (e.g. gnome-backgrounds' 4K WebP wallpapers).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

PACKAGES: tuple[str, ...] = ("plasma-workspace-wallpapers", "desktop-base", "openclipart-png")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})  # svg: Pillow can't read it
MARKER = ".complete.json"  # written last inside a package directory


def default_cache_dir() -> Path:
    env = os.environ.get("FARAMIR_BENCH_IMAGES")
    return Path(env) if env else Path.home() / ".cache" / "faramir" / "bench-images"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.is_symlink()


def _log(msg: str) -> None:
    print(f"bench-images: {msg}", file=sys.stderr)


class _Apt:
    """`apt-get download`, running `apt-get update` at most once and only when lists are missing."""

    def __init__(self) -> None:
        self.updated = False

    @staticmethod
    def _lists_missing(stderr: str) -> bool:
        lists = Path("/var/lib/apt/lists")
        have_lists = lists.is_dir() and any(lists.glob("*_Packages*"))
        unknown = "Unable to locate package" in stderr or "no installation candidate" in stderr
        return not have_lists or unknown

    def download(self, package: str, dest: Path) -> Path | None:
        """The downloaded .deb in `dest`, or None (with a message) when it can't be had."""
        if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
            _log(f"skipping {package}: apt-get/dpkg not available on this machine")
            return None
        # Sandbox user root: the _apt user can't write into a private temp dir.
        cmd = ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", package]
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if proc.returncode != 0 and not self.updated and self._lists_missing(proc.stderr):
            self.updated = True
            _log("apt-get download failed; running apt-get update once")
            upd = subprocess.run(["apt-get", "-q", "update"], capture_output=True, text=True)
            if upd.returncode != 0:
                _log(f"apt-get update failed: {upd.stderr.strip().splitlines()[-1:]}")
            proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            _log(f"skipping {package}: apt-get download failed: {reason}")
            return None
        debs = sorted(dest.glob("*.deb"))
        if not debs:
            _log(f"skipping {package}: apt-get download produced no .deb")
            return None
        return debs[0]


def _fetch_package(package: str, cache: Path, apt: _Apt) -> bool:
    """Download and unpack one package's images into `cache/package`. True when it is there."""
    final = cache / package
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{package}-", dir=cache) as tmp:
        tmp_path = Path(tmp)
        dl = tmp_path / "deb"
        dl.mkdir()
        deb = apt.download(package, dl)
        if deb is None:
            return False
        root = tmp_path / "root"
        proc = subprocess.run(["dpkg", "-x", str(deb), str(root)], capture_output=True, text=True)
        if proc.returncode != 0:
            _log(f"skipping {package}: dpkg -x failed: {proc.stderr.strip()}")
            return False
        staged = tmp_path / "images"
        count = size = 0
        for path in sorted(root.rglob("*")):
            if not _is_image(path):
                continue
            target = staged / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            count += 1
            size += target.stat().st_size
        staged.mkdir(exist_ok=True)
        info = {"package": package, "deb": deb.name, "images": count, "bytes": size}
        (staged / MARKER).write_text(json.dumps(info, indent=1) + "\n")
        if final.exists():  # an incomplete leftover from an older layout or a crash
            shutil.rmtree(final)
        os.replace(staged, final)
        _log(f"{package}: {count} images, {size / 1e6:.1f} MB from {deb.name}")
        return True


def ensure_cache(cache_dir: str | os.PathLike | None = None, packages=PACKAGES) -> Path:
    """Fill the cache with every package not yet there; a no-op (no apt) once all are cached."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    apt = _Apt()
    for package in packages:
        if not (cache / package / MARKER).is_file():
            _fetch_package(package, cache, apt)
    return cache


def cached_packages(cache: Path) -> list[str]:
    return [p for p in PACKAGES if (cache / p / MARKER).is_file()]


def _list_images(cache: Path) -> list[Path]:
    return sorted(
        path
        for package in cached_packages(cache)
        for path in (cache / package).rglob("*")
        if _is_image(path)
    )


def package_images(package: str, cache_dir=None) -> list[Path]:
    """The images of one package (fetched first if needed; none when it can't be had), sorted."""
    cache = ensure_cache(cache_dir, (package,))
    if not (cache / package / MARKER).is_file():
        return []
    return sorted(p for p in (cache / package).rglob("*") if _is_image(p))


def bench_images(n: int | None = None, cache_dir=None, seed: int = 0) -> list[Path]:
    """Up to `n` cached images (all when None): sorted, shuffled with `seed`, deterministic.

    Fills the cache first when a package is missing (downloads need apt; a package that can't be
    had is skipped with a message on stderr).
    """
    cache = ensure_cache(cache_dir)
    paths = _list_images(cache)
    random.Random(seed).shuffle(paths)
    return paths if n is None else paths[:n]


def summary(cache: Path) -> list[tuple[str, int, int]]:
    """(package, images, bytes) for each cached package."""
    rows = []
    for package in cached_packages(cache):
        files = [p for p in (cache / package).rglob("*") if _is_image(p)]
        rows.append((package, len(files), sum(p.stat().st_size for p in files)))
    return rows


def stats(paths: list[Path], cache: Path | None = None) -> dict[str, Counter]:
    """Distribution of formats, modes (transparency keys marked), ICC profiles and sizes.

    Headers only. Images over Pillow's decompression-bomb limit are counted, not refused (Pillow
    itself refuses to open those over twice the limit).
    """
    import warnings

    from PIL import Image

    out: dict[str, Counter] = {
        "format": Counter(), "mode": Counter(), "icc profile": Counter(),
        "longest side": Counter(), "over bomb limit": Counter(), "unreadable": Counter(),
    }
    limit = Image.MAX_IMAGE_PIXELS or 0
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        for path in paths:
            package = path.relative_to(cache).parts[0] if cache is not None else "?"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(path) as img:
                        mode = img.mode
                        if "transparency" in img.info and mode not in ("RGBA", "LA", "PA"):
                            mode += "+transparency"
                        fmt, size, icc = img.format, img.size, "icc_profile" in img.info
            except Exception as ex:  # noqa: BLE001 - a statistic, not a decision
                out["unreadable"][f"{package}: {type(ex).__name__}"] += 1
                continue
            out["format"][fmt] += 1
            out["mode"][mode] += 1
            out["mode"][f"{package}: {mode}"] += 1
            if icc:
                out["icc profile"][package] += 1
            pixels = size[0] * size[1]
            if limit and pixels > limit:
                out["over bomb limit"]["refused (>2x)" if pixels > 2 * limit else "warned"] += 1
            side = max(size)
            for bound, name in ((64, "<=64"), (256, "65-256"), (512, "257-512"), (1024, "513-1024"),
                                (2048, "1025-2048"), (4096, "2049-4096")):
                if side <= bound:
                    out["longest side"][name] += 1
                    break
            else:
                out["longest side"][">4096"] += 1
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Real artwork images for FARAMIR benchmarks.")
    parser.add_argument(
        "--dir", default=None, help=f"cache directory (default {default_cache_dir()})"
    )
    parser.add_argument("--count", action="store_true", help="only report what is cached; no apt")
    parser.add_argument("--stats", action="store_true", help="also image format/mode/size counts")
    args = parser.parse_args(argv)

    cache = Path(args.dir).expanduser() if args.dir else default_cache_dir()
    if not args.count:
        ensure_cache(cache)
    rows = summary(cache)
    for package, count, size in rows:
        print(f"{package}\t{count} images\t{size} bytes ({size / 1e6:.1f} MB)")
    total_n = sum(r[1] for r in rows)
    total_b = sum(r[2] for r in rows)
    print(f"total\t{total_n} images\t{total_b} bytes ({total_b / 1e6:.1f} MB)\t{cache}")
    if args.stats:
        for name, counter in stats(_list_images(cache), cache).items():
            if counter:
                print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counter.most_common()))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
