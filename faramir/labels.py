"""Curator labels: 'accept', 'reject' or one of the 30 label names, and the decision each means.

A label given as one of the 30 names counts as accept iff it is accept-biased (index < 9): only
the decision layers learn in a finetune, so a label teaches only its side. No torch here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import numpy as np

from faramir.config import ACCEPT_LABELS, LABELS, N_CLASSES

_ALIASES = {"degrated": "degraded"}  # upstream's README spelling


def canonical_label(label: str) -> str:
    """'accept', 'reject' or the upstream name, matched ignoring case and surrounding whitespace
    ('degrated' is read as 'degraded'). Raises ValueError naming the label and the valid choices."""
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {type(label).__name__}: {label!r}")
    key = label.strip().lower()
    key = _ALIASES.get(key, key)
    if key in ("accept", "reject") or key in LABELS:
        return key
    close = difflib.get_close_matches(key, ("accept", "reject", *LABELS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(
        f"unknown label {label!r}{hint}: expected 'accept', 'reject' or one of the "
        f"{N_CLASSES} FARAMIR labels: {', '.join(LABELS)}"
    )


def label_is_accept(label: str) -> bool:
    """True for 'accept' and the accept-biased names, False otherwise (`label` is canonical)."""
    return label == "accept" or label in ACCEPT_LABELS


def label_to_target(label: str) -> bool:
    """True (accept) or False (reject) for any spelling `canonical_label` takes."""
    return label_is_accept(canonical_label(label))


def labels_to_targets(labels: Iterable[str]) -> np.ndarray:
    """`label_to_target` over many labels: a boolean array (each distinct label is parsed once)."""
    names = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels).astype(str)
    uniq, inverse = np.unique(names.reshape(-1), return_inverse=True)
    lookup = np.array([label_to_target(str(u)) for u in uniq], dtype=np.bool_)
    return lookup[inverse] if len(uniq) else np.zeros(0, dtype=np.bool_)
