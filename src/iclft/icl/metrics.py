"""Metrics over a cell's judged predictions (the metric half of inspect_ai's scorer/metric
split; the scorers that judge each prediction are in :mod:`iclft.icl.scoring`), and the
accuracy intervals they use: the Wilson score interval of one binomial proportion, and the
two-level bootstrap over demonstration sets and items.

A metric is a registered function ``metric(rows) -> value`` over the predictions of one cell
(every demonstration set's), named after the field of :class:`~iclft.records.CellResult` it
fills; :func:`cell_metrics` computes them all, and :func:`iclft.icl.evaluate.cell_result`
composes them into the cell's results row. ``interval`` fills three fields at once.
"""

from __future__ import annotations

import math
import statistics
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from iclft.records import Prediction

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


# ----- metrics over one cell's predictions ----------------------------------------------------

Metric = Callable[[Sequence[Prediction]], Any]
#: metric name (a CellResult field; ``interval``: ci_low, ci_high, interval) -> function
METRICS: dict[str, Metric] = {}


def metric(name: str) -> Callable[[Metric], Metric]:
    """Register ``fn(rows) -> value`` as the metric ``name``."""

    def register(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return register


def cell_metrics(rows: Sequence[Prediction]) -> dict[str, Any]:
    """Every registered metric of one cell's predictions, ``interval`` spread into
    ``ci_low``, ``ci_high`` and ``interval``."""
    out: dict[str, Any] = {}
    for name, fn in METRICS.items():
        value = fn(rows)
        if name == "interval":
            out["ci_low"], out["ci_high"], out["interval"] = value
        else:
            out[name] = value
    return out


def set_matrix(rows: Sequence[Prediction]) -> tuple[list[int], list[str], np.ndarray]:
    """``(sets, item ids, correct)`` of one cell's predictions: ``correct[s, i]`` is 1 when set
    ``sets[s]`` answered item ``ids[i]`` right. Every set answers every item."""
    sets = sorted({r.demo_set for r in rows})
    ids = sorted({r.id for r in rows})
    si, ii = {s: j for j, s in enumerate(sets)}, {x: j for j, x in enumerate(ids)}
    m = np.full((len(sets), len(ids)), np.nan)
    for r in rows:
        m[si[r.demo_set], ii[r.id]] = float(bool(r.correct))
    if np.isnan(m).any():
        raise ValueError("a demonstration set did not answer every item of its cell")
    return sets, ids, m


def bootstrap_rng(seed: int, *parts: str | int) -> np.random.Generator:
    """The seeded random stream of one cell's bootstrap (a pure function of its key)."""
    key = [int(seed)] + [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng(key)


@metric("n")
def n_items(rows: Sequence[Prediction]) -> int:
    """Distinct items of the cell (every demonstration set answers each)."""
    return len({r.id for r in rows})


@metric("n_scored")
def n_scored(rows: Sequence[Prediction]) -> int:
    """Prompts scored: items x demonstration sets."""
    return len(rows)


@metric("demo_sets")
def demo_sets(rows: Sequence[Prediction]) -> int:
    return len({r.demo_set for r in rows})


@metric("set_accuracies")
def set_accuracies(rows: Sequence[Prediction]) -> list[float]:
    """The accuracy of each demonstration set, in set order."""
    return [float(a) for a in set_matrix(rows)[2].mean(axis=1)]


@metric("set_sd")
def set_sd(rows: Sequence[Prediction]) -> float | None:
    """Standard deviation of the set accuracies (``None`` with one set)."""
    acc = set_accuracies(rows)
    return statistics.stdev(acc) if len(acc) > 1 else None


@metric("correct")
def correct_count(rows: Sequence[Prediction]) -> int:
    return int(set_matrix(rows)[2].sum())


@metric("accuracy")
def accuracy(rows: Sequence[Prediction]) -> float:
    """Right answers over all prompts of the cell (every set's)."""
    return correct_count(rows) / len(rows)


@metric("interval")
def accuracy_interval(rows: Sequence[Prediction]) -> tuple[float, float, str]:
    """95% interval of the accuracy and how it was made: Wilson over the items with one
    demonstration set; with several, the two-level bootstrap (seeded by the cell's key),
    never narrower than the Wilson interval of the mean over the items the sets share (a
    percentile bootstrap of all-0 or all-1 answers is a point)."""
    first = rows[0]
    _, ids, m = set_matrix(rows)
    n, n_sets, correct = len(ids), m.shape[0], int(m.sum())
    if n_sets == 1:
        return (*wilson_interval(correct, n), WILSON)
    rng = bootstrap_rng(
        first.seed, first.model, first.task, first.variant, first.shots, first.split
    )
    lo, hi = two_level_interval(m, N_BOOT, rng)
    wlo, whi = wilson_interval(correct / n_sets, n)
    return (min(lo, wlo), max(hi, whi), TWO_LEVEL)


@metric("substring_accuracy")
def substring_accuracy(rows: Sequence[Prediction]) -> float:
    """Prompts whose output contains the target (the paper's judge), whatever the protocol."""
    return sum(r.substring_correct for r in rows) / len(rows)


@metric("shortcut_rate")
def shortcut_rate(rows: Sequence[Prediction]) -> float:
    return sum(r.shortcut_answer for r in rows) / len(rows)


@metric("shortcut_only_accuracy")
def shortcut_only_accuracy(rows: Sequence[Prediction]) -> float:
    """What a model answering only by the shortcut scores on these very items (1 on clean
    items by construction; the task declares its misleading value)."""
    return sum(r.shortcut_target == r.target for r in rows) / len(rows)


def _conflict(rows: Sequence[Prediction]) -> list[Prediction]:
    """Shortcut-following where it matters: prompts whose shortcut answer is wrong."""
    return [r for r in rows if r.shortcut_target != r.target]


@metric("conflict_n")
def conflict_n(rows: Sequence[Prediction]) -> int:
    return len({r.id for r in _conflict(rows)})


@metric("conflict_shortcut_rate")
def conflict_shortcut_rate(rows: Sequence[Prediction]) -> float | None:
    conflict = _conflict(rows)
    return sum(r.shortcut_answer for r in conflict) / len(conflict) if conflict else None


@metric("parse_failures")
def parse_failures(rows: Sequence[Prediction]) -> int:
    return sum(r.prediction is None for r in rows)


@metric("shots_used_mean")
def shots_used_mean(rows: Sequence[Prediction]) -> float:
    """Demonstrations actually in the prompts, on average (fewer than shots when truncated)."""
    return sum(r.shots_used for r in rows) / len(rows)


@metric("truncated")
def truncated(rows: Sequence[Prediction]) -> int:
    """Prompts that held fewer demonstrations than the cell's shots."""
    return sum(r.shots_used < r.shots for r in rows)
