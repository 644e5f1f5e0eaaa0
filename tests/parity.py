"""Access to ../shared/fixtures/parity: upstream's exact outputs. Tests skip when it is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

PARITY = Path(os.environ.get(
    "FARAMIR_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"
))

needs_parity = pytest.mark.skipif(
    not (PARITY / "fixtures.json").is_file(),
    reason=f"parity fixtures not found at {PARITY} (set FARAMIR_PARITY_DIR to the fixtures folder)",
)


def fixtures() -> dict:
    return json.loads((PARITY / "fixtures.json").read_text())


def recipe_checkpoint() -> dict[str, torch.Tensor]:
    """The 39-key checkpoint that fixtures.json describes key by key."""
    state = {}
    for entry in fixtures()["checkpoint_recipe"]:
        values = np.random.RandomState(entry["seed"]).standard_normal(entry["shape"])
        values = values * entry["scale"] + entry["offset"]
        if entry.get("abs"):
            values = abs(values) + entry["offset"]
        state[entry["key"]] = torch.from_numpy(values.astype(np.float32))
    return state
