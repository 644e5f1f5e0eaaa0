"""Search by text for the gallery: the text tower of a weights directory, loaded on the first
search and kept for the life of the server (one load, under a lock). The image side of SigLIP is
never loaded, and nothing here imports torch before that first search: telling whether the text
entry is there only looks at files.
"""

from __future__ import annotations

import importlib.util
import os
import threading

from faramir.errors import WeightsNotFound
from faramir.text import EXTRA_HINT
from faramir.text_weights import resolve_text_dir


class TextSearch:
    """The text encoder one server shares between its requests."""

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str = "auto"):
        self.weights_dir, self.device = weights_dir, device
        self._encoder = None
        self._load = threading.Lock()

    def unavailable(self) -> str | None:
        """Why searching by text cannot run here (one line, with how to fix it), or None."""
        if self._encoder is not None:
            return None
        if importlib.util.find_spec("open_clip") is None:
            return f"search by text needs the text extra: {EXTRA_HINT}"
        try:
            resolve_text_dir(self.weights_dir, download=False)
        except WeightsNotFound as ex:
            return f"search by text needs the SigLIP text tower: {ex}"
        return None

    def encoder(self) -> Serialised:
        """The loaded encoder (loaded now if this is the first search). Raises what loading
        raises: WeightsNotFound, WeightsError, TextError."""
        with self._load:
            if self._encoder is None:
                from faramir.store.vectors.text import load_encoder

                self._encoder = Serialised(load_encoder(self.weights_dir, self.device))
            return self._encoder


class Serialised:
    """A text encoder whose `encode` runs one call at a time: the server's worker threads share
    it, and a Hugging Face fast tokenizer must not be entered by two threads at once."""

    def __init__(self, encoder):
        self._encoder = encoder
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode(self, texts):
        with self._lock:
            return self._encoder.encode(texts)
