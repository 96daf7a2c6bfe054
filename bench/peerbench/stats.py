"""Percentiles, medians and ratios of the peer benchmark (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["fmt", "median", "percentile", "ratio", "relative_gap"]


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank percentile (q in [0, 1]): the smallest value with at least q of the
    values at or below it. NaN for no values, so an empty cell never looks like zero."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], got {q}")
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(q * len(data)))
    return data[rank - 1]


def median(values: Sequence[float]) -> float:
    """The middle value, or the mean of the two middle values; NaN for none."""
    data = sorted(values)
    if not data:
        return math.nan
    middle = len(data) // 2
    if len(data) % 2:
        return data[middle]
    return (data[middle - 1] + data[middle]) / 2


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is zero."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def relative_gap(value: float, best: float) -> float:
    """How much worse *value* is than *best*, as a fraction of *best* (lower is better):
    0.05 means 5 % worse; negative means better."""
    return ratio(value - best, best)


def fmt(value: float, digits: int = 2, suffix: str = "") -> str:
    """A table cell: '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"
