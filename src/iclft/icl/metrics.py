"""Metrics over a cell's judged predictions (the metric half of inspect_ai's scorer/metric
split; the scorers that judge each prediction are in :mod:`iclft.icl.scoring`), and the
accuracy intervals they use: the Wilson score interval of one binomial proportion, and the
crossed-design interval over demonstration sets and items.

A metric is a registered function ``metric(rows) -> value`` over the predictions of one cell
(every demonstration set's), named after the field of :class:`~iclft.records.CellResult` it
fills; :func:`cell_metrics` computes them all, and :func:`iclft.icl.evaluate.cell_result`
composes them into the cell's results row. ``interval`` fills three fields at once.

**Crossed design.** Every demonstration set answers the same items, so a cell is an
``(sets, items)`` table of 0/1 answers and its accuracy varies with both the items drawn and
the sets drawn. The two-way ANOVA of the table (:func:`mean_squares`) splits the variance of
the mean into an item part ``(MS_items - MS_res) / (n S)`` (``n - 1`` degrees of freedom) and a
set part ``MS_sets / (n S)`` (``S - 1`` degrees of freedom; it carries the set-by-item residual,
so the small-sample part is an exact scaled chi-square under normality and nothing is counted
twice). The two parts are combined by Banerjee's rule (:func:`banerjee_half_width`): each
part is scaled by the squared t quantile of its own degrees of freedom, which is conservative
for any ratio of the parts (Banerjee 1961, the Behrens-Fisher problem); Welch-Satterthwaite's
single pooled df was measured too permissive with 3 sets.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from iclft.records import Prediction

#: how a results row's interval was made (its ``interval`` field)
WILSON = "wilson over items (one demonstration set)"
CROSSED = (
    "crossed-design t over demonstration sets and items (two-way ANOVA, Banerjee's t "
    "quantile per part, on the logit scale), widened to the Wilson interval of the mean over "
    "the items"
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


def mean_squares(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(MS_sets, MS_items, MS_res)`` of the two-way ANOVA (one observation per cell) of a
    ``(..., S, n)`` table of sets by items; ``MS_sets`` and ``MS_res`` are 0 with one set.

    ``E[MS_sets] = s2_res + n s2_set``, ``E[MS_items] = s2_res + S s2_item``,
    ``E[MS_res] = s2_res`` (sets and items random, crossed)."""
    m = np.asarray(table, dtype=float)
    s, n = m.shape[-2:]
    grand = m.mean(axis=(-2, -1), keepdims=True)  # (..., 1, 1)
    rows = m.mean(axis=-1, keepdims=True)  # (..., S, 1) set means
    cols = m.mean(axis=-2, keepdims=True)  # (..., 1, n) item means
    ss_sets = n * ((rows - grand) ** 2).sum(axis=(-2, -1))
    ss_items = s * ((cols - grand) ** 2).sum(axis=(-2, -1))
    ss_res = ((m - rows - cols + grand) ** 2).sum(axis=(-2, -1))
    ms_sets = ss_sets / (s - 1) if s > 1 else np.zeros_like(ss_sets)
    ms_items = ss_items / (n - 1) if n > 1 else np.zeros_like(ss_items)
    ms_res = ss_res / ((s - 1) * (n - 1)) if s > 1 and n > 1 else np.zeros_like(ss_res)
    return ms_sets, ms_items, ms_res


def t_quantile(alpha: np.ndarray | float, df: float) -> np.ndarray:
    """Two-sided critical value ``t_{df}(1 - alpha/2)``."""
    from scipy.stats import t

    return np.asarray(t.isf(np.asarray(alpha) / 2, df))


#: a variance part of a mean and its degrees of freedom
Part = tuple[np.ndarray, float]


def banerjee_half_width(parts: Sequence[Part], alpha: np.ndarray | float) -> np.ndarray:
    """Half-width ``sqrt(sum_j t_{f_j}(1 - alpha/2)^2 v_j)`` of Banerjee's interval for a mean
    whose variance is the sum of independent parts ``v_j`` with ``f_j`` degrees of freedom
    (parts that are 0 add nothing, whatever their quantile)."""
    total = np.zeros(np.broadcast_shapes(*(np.shape(v) for v, _ in parts), np.shape(alpha)))
    for v, df in parts:
        v = np.asarray(v, dtype=float)
        with np.errstate(over="ignore", invalid="ignore"):
            total = total + np.where(v > 0, t_quantile(alpha, df) ** 2 * v, 0.0)
    return np.sqrt(total)


def crossed_parts(table: np.ndarray) -> list[Part]:
    """The item and set parts of the variance of the mean of a ``(..., S, n)`` table
    (module docstring); with one set, the item part alone (the binomial variance over n)."""
    m = np.asarray(table, dtype=float)
    s, n = m.shape[-2:]
    ms_sets, ms_items, ms_res = mean_squares(m)
    parts: list[Part] = [(np.maximum(ms_items - ms_res, 0.0) / (n * s), n - 1)]
    if s > 1:
        parts.append((ms_sets / (n * s), s - 1))
    return parts


def crossed_interval(table: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """``(low, high)`` of the mean of a ``(..., S, n)`` 0/1 table: Banerjee's interval of the
    crossed parts, made on the logit scale by the delta method (``se / (p (1 - p))``) so that
    it stays inside [0, 1] and follows the skew of accuracies near 0 or 1. A mean of 0 or 1
    gives the point itself (the caller widens it, :func:`accuracy_interval`)."""
    m = np.asarray(table, dtype=float)
    p = m.mean(axis=(-2, -1))
    half = banerjee_half_width(crossed_parts(m), 1 - confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log(p / (1 - p))
        hz = half / (p * (1 - p))
        lo, hi = 1 / (1 + np.exp(-(z - hz))), 1 / (1 + np.exp(-(z + hz)))
    edge = (p <= 0) | (p >= 1)
    return np.where(edge, p, lo), np.where(edge, p, hi)


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
    demonstration set; with several, the crossed-design interval (:func:`crossed_interval`),
    never narrower than the Wilson interval of the mean over the items the sets share (which
    also keeps an all-0 or all-1 cell from being a point)."""
    _, ids, m = set_matrix(rows)
    n, n_sets, correct = len(ids), m.shape[0], int(m.sum())
    if n_sets == 1:
        return (*wilson_interval(correct, n), WILSON)
    lo, hi = crossed_interval(m)
    wlo, whi = wilson_interval(correct / n_sets, n)
    return (min(float(lo), wlo), max(float(hi), whi), CROSSED)


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


def constant_answer_of(targets: Sequence[str | None]) -> str | None:
    """The answer a constant predictor gives: the most frequent target (for a choice task its
    majority label, for free answers the most frequent gold answer), ties to the first in
    sorted order; ``None`` when a target is unknown (rows of old runs)."""
    if not targets or any(t is None for t in targets):
        return None
    counts = Counter(targets)
    top = max(counts.values())
    return min(t for t, c in counts.items() if c == top)  # type: ignore[type-var]


def _item_targets(rows: Sequence[Prediction]) -> list[str | None]:
    """Each distinct item's target, in item order."""
    return list({r.id: r.target for r in sorted(rows, key=lambda r: r.id)}.values())


@metric("constant_answer")
def constant_answer(rows: Sequence[Prediction]) -> str | None:
    """The chance reference of the cell: the answer that is right on most of its items."""
    return constant_answer_of(_item_targets(rows))


@metric("constant_accuracy")
def constant_accuracy(rows: Sequence[Prediction]) -> float | None:
    """What always answering :func:`constant_answer` scores on these very items (chosen on
    them, so it flatters the constant predictor: a claim of learning must beat it)."""
    targets = _item_targets(rows)
    answer = constant_answer_of(targets)
    return None if answer is None else sum(t == answer for t in targets) / len(targets)


@metric("well_formed_rate")
def well_formed_rate(rows: Sequence[Prediction]) -> float:
    """Prompts whose output parses to a valid answer of the task (a choice of a choice task,
    an integer of a free-answer task); loglik scoring always answers a choice."""
    return sum(r.prediction is not None for r in rows) / len(rows)
