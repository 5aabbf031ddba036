"""Accuracy with a 95% Wilson score interval."""

from __future__ import annotations

import math


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``(nan, nan)`` when ``n == 0``).

    Written out rather than calling scipy's ``binomtest`` so it also serves ``n == 0`` and
    arrays of cells cheaply; scipy gives the same numbers (checked in the tests).
    """
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
