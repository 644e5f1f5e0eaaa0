"""JSON text that is always JSON: what every JSON line and JSON report is written with.

Python's `json` writes NaN and infinity as bare `NaN` / `Infinity`, which no JSON parser has to
accept; here they are `null` (a score that is not a number is no score). Timestamps become ISO
8601 text and NumPy scalars plain numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _default(value: Any):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    return str(value)


def _finite(value: Any):
    """`value` with every non-finite float (nested in lists and dicts) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not hasattr(value, "isoformat"):  # a NumPy scalar
        return _finite(value.item())
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """`value` as strict JSON text: non-finite numbers as null."""
    try:
        return json.dumps(value, indent=indent, default=_default, allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere (rare): the slow path
        return json.dumps(_finite(value), indent=indent, default=_default, allow_nan=False)
