"""FARAMIR: the upstream image-assessment model, reimplemented faithfully.

`faramir.load_image` and the config are light (no torch); everything else loads on first use.
"""

from faramir.config import FULL, LABELS, OUTPUT_NAMES, TINY, FaramirConfig
from faramir.errors import FaramirError, ImageLoadError, WeightsError, WeightsNotFound
from faramir.preprocess import load_image

__all__ = [
    "FULL", "LABELS", "OUTPUT_NAMES", "TINY", "FaramirConfig",
    "FaramirError", "ImageLoadError", "WeightsError", "WeightsNotFound", "load_image",
]
__version__ = "0.1.0"
