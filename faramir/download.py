"""Fetching weight files, and choosing the weights directory a command uses: one path for every
file of a weights directory (the four image-side files here, the text tower's in
`faramir.text_weights`), each described by a `WeightFile`.

Sources: the three `.pth` files come over plain HTTPS from GitHub; the SigLIP trunk (and the text
tower) from the Hugging Face Hub through huggingface_hub's cache, then hard-linked (or copied, or
extracted) into the weights directory. Precedence per file is `fetch`'s.

Environment:

    FARAMIR_WEIGHTS         a complete weights directory to use as is; never downloaded into.
    FARAMIR_CACHE           the default weights directory is $FARAMIR_CACHE/weights (else
                            $XDG_CACHE_HOME/faramir/weights, else ~/.cache/faramir/weights).
    FARAMIR_WEIGHTS_MIRROR  a base URL under which every file is found in the weights layout,
                            e.g. http://host/w/faramir-v1.pth; every file (the Hub's too) is then
                            fetched from it over plain HTTP(S), which is how an offline site
                            serves its own copy. file:// URLs work as well.
    HF_ENDPOINT             the Hub endpoint (read at each call, not only at import).
    HF_HUB_CACHE / HF_HOME  where huggingface_hub caches Hub files; a file already there (say,
                            from timm) is reused without any network access.

Every file is written atomically (`faramir.files.atomic_path`): bytes go to a `.part` file beside
the target, the size is checked against Content-Length, a `.pth` must load with
`torch.load(weights_only=True)` and a `.safetensors` must open as one, and only then is the file
renamed into place: an interrupted or rejected download never leaves a file that looks complete.
Connections time out after `TIMEOUT_S`, so a machine without network fails in seconds. The library
never prints: progress goes to `progress(file_name, bytes_done, bytes_total_or_None)`, which may
be called from a worker thread of huggingface_hub.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from faramir.errors import DownloadError, WeightsError, WeightsNotFound
from faramir.files import atomic_path
from faramir.locations import (  # noqa: F401 (CACHE_ENV, for tests)
    AESTHETIC_FILE,
    ARNIQA_FILE,
    CACHE_ENV,
    FARAMIR_FILE,
    SIGLIP_FILE,
    WEIGHTS_ENV,
    default_weights_dir,
    missing_files,
    missing_message,
)

Progress = Callable[[str, int, int | None], None]

HF_REPO_ID = "timm/vit_so400m_patch14_siglip_384.webli"
HF_FILENAME = "model.safetensors"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class WeightFile:
    """One file of a weights directory and where it comes from: a plain HTTPS `url`, or a file of
    a Hugging Face Hub repo (`hub`: repo id, file name), fetched through huggingface_hub's cache
    and put into place by `place(cached, target, name, source)` (default: linked or copied)."""

    name: str  # its path in the weights directory
    url: str | None = None
    hub: tuple[str, str] | None = None
    place: Callable[[Path, Path, str, str], None] | None = None


IMAGE_FILES = (  # the four files every weights directory holds, from upstream
    WeightFile(FARAMIR_FILE, url="https://github.com/redhottensors/FARAMIR/raw/main/faramir-v1.pth"),
    WeightFile(SIGLIP_FILE, hub=(HF_REPO_ID, HF_FILENAME)),
    WeightFile(ARNIQA_FILE, url="https://github.com/miccunifi/ARNIQA/releases/download/weights/ARNIQA.pth"),
    WeightFile(AESTHETIC_FILE, url="https://github.com/discus0434/aesthetic-predictor-v2-5/raw/main/models/"
                                   "aesthetic_predictor_v2_5.pth"),
)
UPSTREAM_URLS: dict[str, str] = {  # where each image-side file comes from, as a URL (the trunk: the Hub's)
    f.name: f.url or f"{HF_DEFAULT_ENDPOINT}/{f.hub[0]}/resolve/main/{f.hub[1]}" for f in IMAGE_FILES}

MIRROR_ENV = "FARAMIR_WEIGHTS_MIRROR"

TIMEOUT_S = 30.0  # connect and per-read timeout: an offline machine fails fast instead of hanging
CHUNK_BYTES = 1 << 20  # read size, and so the granularity of progress reports
USER_AGENT = "faramir-weights-downloader"


# ---------------------------------------------------------------------------- directories


def resolve_weights_dir(
    explicit: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: Progress | None = None,
) -> Path:
    """The weights directory to use: `explicit`, else $FARAMIR_WEIGHTS, else the default one.

    A directory the user named must already be complete (WeightsNotFound otherwise): we never
    write into it behind their back. Only the default directory is filled on demand, and a
    failed download turns into WeightsNotFound listing what is still missing and why; a
    downloaded file that fails validation (say, a pickle that would run code) stays a plain
    WeightsError naming it.
    """
    return resolve_dir(explicit, IMAGE_FILES, missing_message, download=download, progress=progress)


def resolve_dir(explicit, files: Sequence[WeightFile], message: Callable[..., str], *, download: bool,
                progress: Progress | None) -> Path:
    """The weights directory holding `files`: `explicit`, else $FARAMIR_WEIGHTS (either must hold
    them already: WeightsNotFound with `message(root, missing)` otherwise), else the default one,
    where missing files are downloaded (unless not `download`)."""
    named = explicit if explicit not in (None, "") else os.environ.get(WEIGHTS_ENV) or None
    root = Path(named).expanduser() if named is not None else default_weights_dir()
    missing = _missing(root, files)
    if missing and (named is not None or not download):
        raise WeightsNotFound(message(root, missing))
    if missing:
        try:
            fetch(root, files, progress=progress)
        except DownloadError as ex:
            why = one_line(f"download failed: {ex}")
            raise WeightsNotFound(message(root, _missing(root, files), why=why)) from ex
    return root


def _missing(root: Path, files: Sequence[WeightFile]) -> list[str]:
    return missing_files(root, [f.name for f in files])


# ---------------------------------------------------------------------------- downloading


def download_weights(
    dest_dir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    urls: Mapping[str, str] | None = None,
    hf_endpoint: str | None = None,
    only_missing: bool = True,
) -> list[Path]:
    """Fetch the four weight files into `dest_dir` (WEIGHT_FILES layout); see `fetch`."""
    return fetch(dest_dir, IMAGE_FILES, progress=progress, urls=urls, hf_endpoint=hf_endpoint,
                 only_missing=only_missing)


def fetch(
    dest_dir: str | os.PathLike[str],
    files: Sequence[WeightFile],
    *,
    progress: Progress | None = None,
    urls: Mapping[str, str] | None = None,
    hf_endpoint: str | None = None,
    only_missing: bool = True,
) -> list[Path]:
    """Fetch `files` into `dest_dir`; return the paths written.

    Each from, first found: `urls` (file → URL); the Hub at `hf_endpoint`, when given, for a Hub
    file; FARAMIR_WEIGHTS_MIRROR (the weights layout under it); the file's own source (its URL,
    or the Hub at HF_ENDPOINT, else huggingface.co). With `only_missing` (the default) files
    already present are left alone; otherwise all are fetched again and replaced atomically.
    Stops at the first failure, keeping the files completed so far, so a later call resumes with
    what is still missing. Raises DownloadError (a WeightsError) for fetch failures and
    WeightsError for a file that fails validation.
    """
    root = Path(dest_dir).expanduser()
    missing = set(_missing(root, files))
    written: list[Path] = []
    for file in files:
        if only_missing and file.name not in missing:
            continue
        target = root / file.name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as ex:
            raise DownloadError(f"{target}: cannot create its directory ({describe(ex)})") from ex
        url = _plain_url(file, urls or {}, hub_requested=hf_endpoint is not None)
        if url is None:
            _fetch_from_hub(file, target, progress, hf_endpoint, force=not only_missing)
        else:
            _fetch_url(file.name, url, target, progress)
        written.append(target)
    return written


def _plain_url(file: WeightFile, urls: Mapping[str, str], *, hub_requested: bool) -> str | None:
    """The URL to fetch `file` from with urllib, or None when it goes through huggingface_hub."""
    if file.name in urls:
        return urls[file.name]
    if file.hub is not None and hub_requested:  # an explicit hf_endpoint outranks the mirror env var
        return None
    if mirror := os.environ.get(MIRROR_ENV):
        return f"{mirror.rstrip('/')}/{quote(file.name)}"
    return file.url


def _fetch_url(name: str, url: str, target: Path, progress: Progress | None) -> None:
    """Stream `url` into a `.part` file, check its length, validate, rename into place."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with atomic_path(target, suffix=".part") as part:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
                total = _content_length(response)
                done = _copy_stream(response, out, name, total, progress)
            if total is not None and done != total:
                # http.client reports a connection closed early as a short read, not an error.
                raise DownloadError(f"{name}: download from {url} stopped at {done} of {total} bytes; retry")
            _validate(part, target, name, url)
    except (OSError, http.client.HTTPException, ValueError) as ex:
        if isinstance(ex, urllib.error.HTTPError):
            ex.close()  # an HTTPError holds the open error response
        raise DownloadError(f"{name}: download from {url} failed: {describe(ex)}") from ex


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _copy_stream(src: Any, out: BinaryIO, name: str, total: int | None, progress: Progress | None) -> int:
    done = 0
    _report(progress, name, done, total)
    while chunk := src.read(CHUNK_BYTES):
        out.write(chunk)
        done += len(chunk)
        _report(progress, name, done, total)
    return done


def _fetch_from_hub(file: WeightFile, target: Path, progress: Progress | None, endpoint: str | None, *,
                    force: bool) -> None:
    """Get a Hub file through huggingface_hub's cache (`faramir.hub`), then put it into place
    (`file.place`, default: link or copy it)."""
    from faramir import hub

    repo_id, filename = file.hub
    source = hub.url(repo_id, filename, endpoint)
    try:
        cached = hub.cached_file(repo_id, filename, endpoint, force=force, timeout=TIMEOUT_S,
                                 progress=lambda done, total: _report(progress, file.name, done, total))
    except Exception as ex:  # huggingface_hub raises httpx, OSError and its own families alike
        raise DownloadError(f"{file.name}: download from {source} via huggingface_hub failed: {describe(ex)}") from ex
    (file.place or _place_cached)(cached, target, file.name, source)
    size = target.stat().st_size  # complete, whether it came now or from the cache
    _report(progress, file.name, size, size)


def _place_cached(cached: Path, target: Path, name: str, source: str) -> None:
    """Hard-link (same filesystem: no second 1.7 GB copy) or copy a cache file into place."""
    blob = cached.resolve()  # the snapshot entry is a symlink into blobs/
    try:
        with atomic_path(target, suffix=".part") as part:
            try:
                os.link(blob, part)
            except OSError:
                shutil.copyfile(blob, part)
            _validate(part, target, name, source)
    except OSError as ex:
        raise DownloadError(f"{name}: cannot copy {blob} into {target.parent}: {describe(ex)}") from ex


# ---------------------------------------------------------------------------- validation


def _validate(part: Path, target: Path, name: str, source: str) -> None:
    """A finished `.part` file must load: a `.pth` as plain tensors (no code runs), a
    `.safetensors` as one, a `.json` as JSON. Otherwise WeightsError naming `target` and where it came from."""
    from faramir.checkpoints import load_pth  # torch: only once a file has come

    try:
        if name.endswith(".pth"):
            load_pth(part)
        elif name.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(str(part), framework="pt") as f:
                    f.keys()
            except Exception as ex:
                raise WeightsError(f"{part}: not a readable safetensors file ({describe(ex)})") from ex
        elif name.endswith(".json"):
            import json

            try:
                json.loads(part.read_text(encoding="utf-8"))
            except (OSError, ValueError) as ex:
                raise WeightsError(f"{part}: not a readable JSON file ({describe(ex)})") from ex
    except WeightsError as ex:
        reason = str(ex).removeprefix(f"{part}: ")
        raise WeightsError(one_line(f"{target}: downloaded from {source} but rejected: {reason}")) from ex


# ---------------------------------------------------------------------------- helpers


def _report(progress: Progress | None, name: str, done: int, total: int | None) -> None:
    if progress is not None:
        progress(name, done, total)


def describe(ex: BaseException) -> str:
    """A short one-line reason for a fetch failure."""
    if isinstance(ex, urllib.error.HTTPError):
        return f"HTTP {ex.code} {ex.reason}"
    if isinstance(ex, urllib.error.URLError):
        reason = ex.reason
        return describe(reason) if isinstance(reason, BaseException) else one_line(str(reason))
    if isinstance(ex, TimeoutError):
        return f"timed out after {TIMEOUT_S:g} s"
    text = str(ex).strip().splitlines()[0] if str(ex).strip() else ""
    if not text and ex.__cause__ is not None:
        return describe(ex.__cause__)
    return one_line(f"{type(ex).__name__}: {text}" if text else type(ex).__name__)


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
