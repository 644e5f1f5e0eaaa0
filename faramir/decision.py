"""Upstream's decision rule, written once: an image is accepted iff its confidence is above the
threshold T, and its label is the best accept-side label when accepted, else the best reject-side
one. Thresholds are never stored; every caller applies this rule at the T it is given.

Upstream compares a float32 tensor with a Python float, which torch does in float32, so T is
rounded to float32 first (`f32`). The rounded value is exactly representable, so the comparison
gives the same answer at any width: NumPy, torch, Arrow and SQL (`accepted_sql`) all agree with
upstream, even at thresholds such as 0.1 that float32 cannot hold exactly.

`accepted`, `label` and `decide` take NumPy arrays, torch tensors, Arrow arrays or Python scalars
and return the same kind. Only NumPy is imported here; torch and pyarrow only when given their
arrays, so the rule costs a query nothing to import.
"""

from __future__ import annotations

import numpy as np


def f32(value: float) -> float:
    """`value` rounded to float32, as torch rounds a Python scalar compared with a float32 tensor;
    beyond float32's range, ±inf without a warning (callers that need a finite value check)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def sql_float(value: float) -> str:
    """`value` rounded to float32 as a SQL literal (the shortest repr that round-trips). A value
    that rounds to infinity or NaN has no literal (SQL would read `inf` as a column name)."""
    rounded = f32(value)
    if not np.isfinite(rounded):
        raise ValueError(f"{value!r} is no finite float32 number")
    return repr(rounded)


def _kind(array) -> str:
    module = type(array).__module__
    if module.startswith("pyarrow"):
        return "arrow"
    if module.startswith("torch"):
        return "torch"
    if isinstance(array, (bool, int, float, str, np.bool_)):
        return "scalar"
    return "numpy"


def accepted(confidence, threshold: float):
    """confidence > T: booleans of the same kind as `confidence` (NaN is never accepted)."""
    t = f32(threshold)
    if _kind(confidence) == "arrow":
        import pyarrow as pa
        import pyarrow.compute as pc

        return pc.greater(confidence, pa.scalar(t, pa.float32()))
    return confidence > t


def label(is_accepted, accept_label, reject_label):
    """The label at the decision: `accept_label` where accepted, else `reject_label`."""
    kind = _kind(is_accepted)
    if kind == "arrow":
        import pyarrow.compute as pc

        return pc.if_else(is_accepted, accept_label, reject_label)
    if kind == "torch":
        import torch  # already loaded: the caller holds a tensor

        return torch.where(is_accepted, accept_label, reject_label)
    if kind == "scalar":
        return accept_label if is_accepted else reject_label
    return np.where(is_accepted, accept_label, reject_label)


def decide(confidence, accept_label, reject_label, threshold: float):
    """(accepted, label) at threshold T; see `accepted` and `label`."""
    is_accepted = accepted(confidence, threshold)
    return is_accepted, label(is_accepted, accept_label, reject_label)


def accepted_sql(confidence_column: str, threshold: float, is_accepted: bool = True) -> str:
    """The rule as a SQL condition on a confidence column (values in [0, 1], NaN, or NULL for a
    row not scored, which neither side holds).

    SQL engines (Lance's among them) order NaN above every number, so `column > T` alone would
    accept a NaN confidence, which the rule never does. Confidences are at most 1, so the rule is
    `column > T AND column <= 1` for accepted rows and `column <= T OR column > 1` for rejected
    ones (NaN being "above 1"): range conditions a scalar index answers."""
    t = sql_float(threshold)
    if is_accepted:
        return f"({confidence_column} > {t} AND {confidence_column} <= 1.0)"
    return f"({confidence_column} <= {t} OR {confidence_column} > 1.0)"


def tsv_line(path: str, is_accepted: bool, label_name: str, confidence: float) -> str:
    """Upstream inference.py's output line: path, accept|reject, label, confidence (2 decimals).

    The path is a `tsv_field`: the same as upstream's for every path without a tab, newline,
    carriage return or backslash."""
    return f"{tsv_field(path)}\t{'accept' if is_accepted else 'reject'}\t{label_name}\t{confidence:.2f}"


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(text: str) -> str:
    """`text` as one TSV field: backslash, tab, newline and carriage return written as \\\\, \\t, \\n
    and \\r (the "linear TSV" convention), so a file name holding them never splits a row."""
    return text.translate(_TSV_ESCAPES)
