"""Starting or joining Ray for `faramir ingest --ray ADDRESS`: the one place that calls `ray.init`.

"local" starts a Ray instance on this machine; "auto", "ray://HOST:PORT" or "HOST:PORT" joins a
running cluster. Only a run with `--ray` imports this module, and only it imports Ray.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from faramir.errors import FaramirError, InputError
from faramir.store.errors import RayError


def check(address: str) -> None:
    """Fail at once, before any planning, when `--ray ADDRESS` cannot work here."""
    if not address or not (address in ("local", "auto") or address.startswith("ray://") or ":" in address):
        raise InputError(f"--ray {address!r}: use local, auto, ray://HOST:PORT or HOST:PORT")
    try:
        import lance_ray  # noqa: F401
        import ray  # noqa: F401
    except ImportError as ex:
        raise RayError(f"--ray needs Ray and lance-ray ({ex.name} is missing): install faramir "
                       f"with the ray extra (pip install 'faramir[ray]')") from ex


def connect(address: str, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray (`num_cpus` for a local instance; default: all). True when
    this call connected, and the caller then disconnects; False when this process was connected
    already: that connection is used, whatever `address` says."""
    check(address)
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        # Workers import the faramir the driver runs, even from a source tree.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        with warnings.catch_warnings():  # Ray's processes are forked and exec'd at once
            warnings.filterwarnings("ignore", "lancedb fork support is experimental", RuntimeWarning)
            warnings.filterwarnings("ignore", "lance is not fork-safe", UserWarning)
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, runtime_env={"env_vars": {"PYTHONPATH": path}},
                     # Ray runs workers at nice 15; here they do the work a local ingest does at
                     # the user's priority (at nice 15 a busy machine starves them).
                     _system_config={"worker_niceness": 0})
        return True
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as ex:
        raise RayError(f"--ray {address}: cannot join a Ray cluster there ({ex}); start one with "
                       f"'ray start --head', or use --ray local") from ex
    return True


def our_error(ex: BaseException) -> FaramirError | None:
    """Our own error inside a Ray task's or actor's failure (said in one line, not a traceback)."""
    seen = set()
    while ex is not None and id(ex) not in seen:
        if isinstance(ex, FaramirError):
            return ex
        seen.add(id(ex))
        ex = getattr(ex, "cause", None) or ex.__cause__
    return None
