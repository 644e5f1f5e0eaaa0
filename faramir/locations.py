"""The weights directory's layout (four files in their upstream formats) and where faramir looks
for one when not told: the environment variables and the default weights directory. Apart from
`faramir.weights` (which loads the files with torch), so that finding out whether a file is
there never imports torch.

Layout (exactly these paths under one directory):

    faramir-v1.pth                                         FARAMIR: attn_pool.*, norm.*, head.*
    vit_so400m_patch14_siglip_384.webli/model.safetensors  SigLIP trunk, timm keys
    ARNIQA.pth                                             model.*, projector.*
    aesthetic_predictor_v2_5.pth                           scoring_head.*
"""

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


FARAMIR_FILE = "faramir-v1.pth"
SIGLIP_FILE = "vit_so400m_patch14_siglip_384.webli/model.safetensors"
ARNIQA_FILE = "ARNIQA.pth"
AESTHETIC_FILE = "aesthetic_predictor_v2_5.pth"
WEIGHT_FILES = (FARAMIR_FILE, SIGLIP_FILE, ARNIQA_FILE, AESTHETIC_FILE)

SOURCES = {  # where each file comes from, for messages and the downloader
    FARAMIR_FILE: "github.com/redhottensors/FARAMIR (repository root)",
    SIGLIP_FILE: "huggingface.co/timm/vit_so400m_patch14_siglip_384.webli",
    ARNIQA_FILE: "github.com/miccunifi/ARNIQA (release 'weights')",
    AESTHETIC_FILE: "github.com/discus0434/aesthetic-predictor-v2-5 (models/)",
}


def missing_files(weights_dir: str | os.PathLike, names=WEIGHT_FILES) -> list[str]:
    """Which of `names` (default: the four image-side files) the weights directory lacks."""
    root = Path(weights_dir)
    return [name for name in names if not (root / name).is_file()]


def missing_message(weights_dir: str | os.PathLike, missing: list[str], why: str = "") -> str:
    listing = "; ".join(f"{name} (from {SOURCES[name]})" for name in missing)
    reason = f" ({why})" if why else ""
    return (
        f"FARAMIR weights missing in {weights_dir}{reason}: {listing}. Put them there, or pass "
        f"--weights-dir DIR / set FARAMIR_WEIGHTS to a directory holding all four, or run "
        f"'faramir weights download --to DIR' on a machine with network access."
    )
