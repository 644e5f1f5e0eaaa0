"""Which rows a query keeps: a `Filter`, judged by one head's scores at one threshold.

The threshold is applied with upstream's rule (`faramir.decision`): accepted iff confidence > T,
the label from the accept or reject side accordingly. `Filter.where` is the rule as SQL for Lance
(the form every query runs); `Filter.keep` is the same filter over in-memory NumPy rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from faramir.config import ACCEPT_LABELS, DEFAULT_THRESHOLD, LABELS
from faramir.decision import accepted_sql, decide, f32, sql_float
from faramir.store import schema
from faramir.store.errors import QueryError
from faramir.store.schema import HeadColumns
from faramir.store.sql import sql_in

SHOWS = ("all", "accepted", "rejected")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # which side of the threshold a face shows


@dataclass(frozen=True)
class Filter:
    """Which rows a query keeps, judged by one head at one threshold. Ranges are inclusive."""

    head: str = schema.DEFAULT_HEAD  # registered head whose scores are read
    threshold: float = DEFAULT_THRESHOLD  # accepted iff confidence > threshold
    accepted: bool | None = None  # True: accepted only; False: rejected only; None: both
    labels: tuple[str, ...] = ()  # any of these labels (each as the label at this threshold)
    min_confidence: float | None = None
    max_confidence: float | None = None
    min_aesthetic: float | None = None  # aesthetic v2.5 score, about 1-10
    max_aesthetic: float | None = None

    def __post_init__(self):
        labels = (self.labels,) if isinstance(self.labels, str) else tuple(self.labels or ())
        object.__setattr__(self, "labels", tuple(dict.fromkeys(labels)))
        if not (0.0 <= self.threshold <= 1.0):
            raise QueryError(f"threshold {self.threshold}: must be between 0 and 1")
        unknown = [label for label in self.labels if label not in LABELS]
        if unknown:
            raise QueryError(f"unknown label{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"valid labels: {', '.join(LABELS)}")
        if self.accepted is not None:
            wrong = [label for label in self.labels if (label in ACCEPT_LABELS) != self.accepted]
            if wrong and len(wrong) == len(self.labels):
                side = "a rejected" if self.accepted is False else "an accepted"
                raise QueryError(
                    f"label{'s' if len(wrong) > 1 else ''} {', '.join(wrong)} can never be the label of "
                    f"{side} image (accept-side labels: {', '.join(l for l in LABELS if l in ACCEPT_LABELS)})"
                )
        for name in ("min_confidence", "max_confidence"):
            value = getattr(self, name)
            if value is not None and not (0.0 <= value <= 1.0):
                raise QueryError(f"{name.replace('_', ' ')} {value}: must be between 0 and 1")
        for name in ("min_aesthetic", "max_aesthetic"):  # compared with float32 scores, as SQL
            value = getattr(self, name)
            if value is not None and not abs(value) <= FLOAT32_MAX:
                raise QueryError(f"{name.replace('_', ' ')} {value}: must be a number within float32's range "
                                 f"(the aesthetic score is about 1-10)")
        for lo, hi in (("min_confidence", "max_confidence"), ("min_aesthetic", "max_aesthetic")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise QueryError(f"{lo.replace('_', ' ')} {a} is above {hi.replace('_', ' ')} {b}")

    @classmethod
    def from_options(cls, *, head: str = schema.DEFAULT_HEAD, threshold: float = DEFAULT_THRESHOLD,
                     show: str = "all", labels: Sequence[str] = (), min_confidence: float | None = None,
                     max_confidence: float | None = None, min_aesthetic: float | None = None,
                     max_aesthetic: float | None = None) -> Filter:
        """The Filter of a face's options, as the CLI's flags and the gallery's address give
        them: `show` is all, accepted or rejected; each of `labels` may name several labels,
        comma-separated."""
        if show not in SHOWS:
            raise QueryError(f"show {show!r}: use one of {', '.join(SHOWS)}")
        return cls(head=head, threshold=threshold, accepted={"all": None, "accepted": True, "rejected": False}[show],
                   labels=tuple(x.strip() for item in labels or () for x in item.split(",") if x.strip()),
                   min_confidence=min_confidence, max_confidence=max_confidence,
                   min_aesthetic=min_aesthetic, max_aesthetic=max_aesthetic)

    @classmethod
    def of(cls, filter: Filter | None = None, **filters) -> Filter:
        """`filter` as given, or a Filter of these keyword arguments (the fields above)."""
        if filter is not None:
            if filters:
                raise TypeError(f"give a Filter or filter arguments ({', '.join(sorted(filters))}), not both")
            return filter
        unknown = sorted(set(filters) - set(FILTER_FIELDS))
        if unknown:
            raise TypeError(f"unknown filter argument(s) {', '.join(unknown)}; use {', '.join(FILTER_FIELDS)}")
        return cls(**filters)

    def where(self, cols: HeadColumns) -> str:
        """The SQL condition over the head's columns."""
        conf = cols.confidence
        parts = []
        if self.accepted is not None:
            parts.append(accepted_sql(conf, self.threshold, self.accepted))
        if self.labels:
            # An accept-side label is only ever the label of an accepted row, a reject-side one of
            # a rejected row: the general rule reduces to one IN list per side.
            sides = []
            accept = [x for x in self.labels if x in ACCEPT_LABELS]
            reject = [x for x in self.labels if x not in ACCEPT_LABELS]
            if accept:
                sides.append(f"({accepted_sql(conf, self.threshold)} AND {sql_in(cols.accept_label, accept)})")
            if reject:
                sides.append(f"({accepted_sql(conf, self.threshold, False)} AND "
                             f"{sql_in(cols.reject_label, reject)})")
            parts.append("(" + " OR ".join(sides) + ")")
        # A lower bound alone would keep NaN (SQL orders it above every number): bound it above too.
        max_confidence = 1.0 if self.min_confidence is not None and self.max_confidence is None else self.max_confidence
        for column, bound, op in ((conf, self.min_confidence, ">="), (conf, max_confidence, "<="),
                                  ("aesthetic_score", self.min_aesthetic, ">="),
                                  ("aesthetic_score", self.max_aesthetic, "<=")):
            if bound is not None:
                parts.append(f"{column} {op} {sql_float(bound)}")
        # Rows not (yet) scored by this head are never returned. Any comparison on the confidence
        # already rejects NULL; the extra IS NOT NULL term would cost a second index lookup
        # (a quarter of a filtered nearest-neighbour search at a million rows).
        if not any(conf in part for part in parts):
            parts.insert(0, f"{conf} IS NOT NULL")
        return " AND ".join(parts)

    def keep(self, confidence: np.ndarray, accept_label: Sequence[str], reject_label: Sequence[str],
             aesthetic: np.ndarray | None = None) -> np.ndarray:
        """The same filter in NumPy over in-memory rows (a reference for tests and benchmarks);
        a NaN confidence here stands for a row the head has not scored (NULL)."""
        conf = np.asarray(confidence, np.float32)
        accepted, label = decide(conf, np.asarray(accept_label), np.asarray(reject_label), self.threshold)
        keep = ~np.isnan(conf)
        if self.accepted is not None:
            keep &= accepted == self.accepted
        if self.labels:
            keep &= np.isin(label, list(self.labels))
        for values, bound, above in ((conf, self.min_confidence, True), (conf, self.max_confidence, False),
                                     (aesthetic, self.min_aesthetic, True), (aesthetic, self.max_aesthetic, False)):
            if bound is not None and values is not None:
                values = np.asarray(values, np.float32)
                keep &= values >= f32(bound) if above else values <= f32(bound)
        return keep


FILTER_FIELDS = tuple(f.name for f in fields(Filter))
