"""Where faramir looks for its weights when not told: the environment variables and the default
weights directory. Kept apart from `faramir.download` (which needs torch to validate what it
fetches) so that finding out whether a file is there never imports torch."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "FARAMIR_WEIGHTS"
CACHE_ENV = "FARAMIR_CACHE"


def default_weights_dir() -> Path:
    """$FARAMIR_CACHE/weights, else $XDG_CACHE_HOME/faramir/weights, else ~/.cache/faramir/weights."""
    if base := os.environ.get(CACHE_ENV):
        return Path(base).expanduser() / "weights"
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "faramir" / "weights"
    return Path.home() / ".cache" / "faramir" / "weights"
