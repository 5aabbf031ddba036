"""Accuracy intervals: the Wilson score interval of one binomial proportion, and the two-level
bootstrap over demonstration sets and items."""

from __future__ import annotations

import math

import numpy as np

#: bootstrap replicates of every interval iclft draws by resampling
N_BOOT = 2000
#: how a results row's interval was made (its ``interval`` field)
WILSON = "wilson over items (one demonstration set)"
TWO_LEVEL = (
    "two-level bootstrap: demonstration sets, then items (95% percentile), widened to the "
    "Wilson interval of the mean over the items"
)


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


def resample_counts(size: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, size)`` multiplicities of a bootstrap resample of ``size`` units: row b says
    how often each unit was drawn (a multinomial draw, the same as drawing indices)."""
    return rng.multinomial(size, np.full(size, 1.0 / size), size=n_boot).astype(float)


def two_level_means(matrix, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap distribution of the mean of a ``(sets, items)`` matrix of per-item scores,
    resampling demonstration sets, then items.

    Every set answers the same items (the design is crossed, not nested), so one replicate
    draws ``sets`` sets with replacement and one resample of the items with replacement, and
    takes the mean of the resampled sets over the resampled items. Drawing items afresh for
    each set instead would treat an item's difficulty as independent across sets and shrink
    the item part of the variance by the number of sets. With one set this is the ordinary
    bootstrap over items."""
    m = np.asarray(matrix, dtype=float)  # (S, n)
    s, n = m.shape
    w = resample_counts(s, n_boot, rng)  # (B, S)
    v = resample_counts(n, n_boot, rng)  # (B, n)
    return np.einsum("bs,sn,bn->b", w, m, v) / (s * n)  # (B,)


def two_level_interval(
    matrix, n_boot: int, rng: np.random.Generator, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of :func:`two_level_means`."""
    means = two_level_means(matrix, n_boot, rng)
    lo, hi = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    return (float(lo), float(hi))
