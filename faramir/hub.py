"""Files of the Hugging Face Hub, through huggingface_hub's cache: the SigLIP trunk and the text
tower come this way (`faramir.download` puts them into a weights directory).

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HOME once, at import: they are read here at
each call, so the environment as it is now always counts.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def url(repo_id: str, filename: str, endpoint: str | None = None) -> str:
    """Where huggingface_hub fetches `filename` of `repo_id` from."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, endpoint=_endpoint(endpoint))


def cached_file(repo_id: str, filename: str, endpoint: str | None, *, force: bool, timeout: float,
                progress: Callable[[int, int | None], None]) -> Path:
    """The file in huggingface_hub's cache, downloaded first unless it is there (or `force`);
    `progress(bytes_done, bytes_total)` while downloading. Raises what huggingface_hub raises."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, try_to_load_from_cache

    endpoint = _endpoint(endpoint)
    cache_dir = _hf_cache_dir()
    cached = None if force else try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    if isinstance(cached, str):
        return Path(cached)
    # One HEAD without retries first: when the host is unreachable, hf_hub_download retries its
    # metadata call with backoff for about 25 s before giving up.
    get_hf_file_metadata(url(repo_id, filename, endpoint), timeout=timeout)
    kwargs: dict[str, Any] = {}
    if _accepts_tqdm_class(hf_hub_download):  # older huggingface_hub lacks it: no progress then
        kwargs["tqdm_class"] = _relay_bar_class(progress)
    return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, endpoint=endpoint, etag_timeout=timeout,
                                force_download=force, **kwargs))


def _endpoint(endpoint: str | None) -> str | None:
    return (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def _hf_cache_dir() -> str:
    """huggingface_hub's cache directory, from the environment as it is now (it reads it at import)."""
    from huggingface_hub import constants

    if cache := os.environ.get("HF_HUB_CACHE"):
        return cache
    if home := os.environ.get("HF_HOME"):
        return os.path.join(home, "hub")
    return constants.HF_HUB_CACHE


def _accepts_tqdm_class(fn: Callable[..., Any]) -> bool:
    try:
        return "tqdm_class" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _relay_bar_class(progress: Callable[[int, int | None], None]) -> type:
    """A tqdm stand-in for huggingface_hub: forwards byte counts to `progress`, prints nothing.

    Not a tqdm subclass on purpose: huggingface_hub then builds it with plain keyword arguments
    and never turns on a terminal bar. `update_transfer` makes its Xet path use one bar whose
    `update` counts bytes written (network bytes, which differ with dedup, are ignored).
    """

    class RelayBar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            self.total = total
            self.n = initial
            progress(self.n, self.total)

        def update(self, n: int | float = 1) -> None:
            self.n += int(n)  # negative after a restarted transfer; that is the truth
            progress(self.n, self.total)

        def update_transfer(self, n: int | float = 1) -> None:
            pass

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

        def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self) -> RelayBar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return RelayBar


