"""FARAMIR: the upstream image-assessment model, reimplemented faithfully.

Importing `faramir` loads only the config and the errors; `faramir.load_image` (Pillow and
NumPy, no torch) loads on first use, and every module that needs torch is imported by name.

Layout, one concept per module (building blocks first):

- config, errors, labels, decision (the accept/reject rule), files (atomic writes, regular
  files only, hashes), json_text (strict JSON);
- stage one: sources (which files), preprocess (pixels), decoding (worker processes), experts;
- stage two: head (forward_norm / forward_head), metrics, finetune;
- the model and its weights: model, weights (the directory), checkpoints, digests, download,
  fake_weights (generated weights for tests), devices; pipeline (upstream's assess loop).
"""

from faramir.config import FULL, LABELS, OUTPUT_NAMES, TINY, FaramirConfig
from faramir.errors import FaramirError, ImageLoadError, WeightsError, WeightsNotFound

__all__ = [
    "FULL", "LABELS", "OUTPUT_NAMES", "TINY", "FaramirConfig",
    "FaramirError", "ImageLoadError", "WeightsError", "WeightsNotFound", "load_image",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_image":
        from faramir.preprocess import load_image

        return load_image
    raise AttributeError(f"module 'faramir' has no attribute {name!r}")
