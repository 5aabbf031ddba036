"""Paired comparisons of two settings scored on the same items, and their adjustment for the
number of comparisons a run makes.

ICL and every fine-tuned model answer the *same* test items, so their difference is measured
pairwise. A setting evaluated over ``S`` demonstration sets is an ``(S, n)`` table of 0/1
answers on the ``n`` items (a 0-shot setting or a fine-tuned model has one set), and the
difference of accuracies ``d = mean(a) - mean(b)`` varies with the items drawn and with each
side's sets drawn. Its variance is the sum of

* an **item part**: the variance over items of the per-item difference
  ``d_i = a_i - b_i`` (each side's mean over its sets), less each side's set-by-item
  residual ``MS_res / S`` (counted in the set part), over ``n``; ``n - 1`` degrees of freedom;
* each side's **set part** ``MS_sets / (n S)`` from the two-way ANOVA of its table
  (:func:`iclft.icl.metrics.crossed_parts`); ``S - 1`` degrees of freedom.

The test of ``d = delta`` takes the item part about ``delta`` (``sum (d_i - delta)^2``,
the variance under the hypothesis, as McNemar's test does) and rejects when ``|d - delta|``
exceeds Banerjee's half-width ``sqrt(sum_j t_{f_j}^2 v_j)`` (each part with the t quantile of
its own degrees of freedom; conservative whatever the parts' ratio), and the paired t test on
the items' set means rejects too (so that a set part estimated near 0 by chance never makes
the test surer than treating the drawn sets as the only ones). The p-value is the level at
which the half-width equals ``|d - delta|`` (the larger of the two tests'), and the 95%
interval is the set of ``delta`` the test does not reject (in closed form), so the interval
excludes 0 exactly when p < 0.05. With one set per side this is the paired t test on items
about ``delta`` (at ``delta = 0``, McNemar's statistic with a t reference); the exact
McNemar p-value is kept beside it (``p_mcnemar``). With several sets, the exact McNemar p
of each set against the other side is kept in ``p_values_per_set``.

Every setting that can claim to have learned (ICL, each fine-tuned model) is also compared
with the **constant answer** on the same items (:data:`iclft.records.CONSTANT`): always
answering the target that is most frequent among each seed's items (a choice task's majority
label). Every p-value of a run is then adjusted by **Holm's** step-down method over all its
comparisons (``p_adjusted``), which bounds the chance of any false claim among them; sentences
decide on the adjusted p.

Pairs are keyed by ``(seed, item id)``: with several seeds the items of every seed are pooled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from iclft.icl.metrics import (
    Part,
    banerjee_half_width,
    constant_answer_of,
    mean_squares,
    t_quantile,
)
from iclft.records import BASELINE, CONSTANT, ICL, Comparison, Prediction
from iclft.stats import ALPHA, holm

#: how the interval and the p-value are made (written into every comparison row)
INTERVAL = "95%: the differences the test does not reject (its inversion)"
TEST = (
    "paired t on items about the hypothesised difference, n-1 df (one demonstration set "
    "per side; asymptotically McNemar)"
)
TEST_SETS = (
    "crossed-design t: item part (about the hypothesised difference, n-1 df) plus each side's "
    "demonstration-set part (two-way ANOVA, S-1 df), Banerjee's t quantile per part"
)
#: short names of the two, for sentences and tables
PAIRED_T, CROSSED_T = "paired t", "crossed t"
#: p-values below this are written as this bound (the tables show p<0.001)
P_FLOOR = 1e-300


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    from scipy.stats import binomtest

    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(binomtest(min(a_only, b_only), n, 0.5).pvalue)


@dataclass(frozen=True)
class CrossedTest:
    """The test of ``mean(a) - mean(b) = delta`` for tables on the same items (arrays over
    any leading dimensions of the tables)."""

    diff: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray


def crossed_test(
    a: np.ndarray, b: np.ndarray, *, delta: float = 0.0, confidence: float = 1 - ALPHA
) -> CrossedTest:
    """Test and interval of the difference of two ``(..., S, n)`` 0/1 tables on the same
    ``n`` items (module docstring). Fewer than 2 items: p = 1 and the interval [-1, 1]."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = a.shape[-1]
    d_i = a.mean(axis=-2) - b.mean(axis=-2)  # (..., n) per-item difference
    diff = d_i.mean(axis=-1)
    if n < 2:
        full = np.ones_like(diff)
        return CrossedTest(diff, -full, full, full)
    s2 = d_i.var(axis=-1, ddof=1)  # about the mean difference
    residual = np.zeros_like(diff)  # each side's set-by-item residual, counted in its set part
    sets: list[Part] = []
    for m in (a, b):
        n_sets = m.shape[-2]
        if n_sets > 1:
            ms_sets, _, ms_res = mean_squares(m)
            residual = residual + ms_res / n_sets
            sets.append((ms_sets / (n * n_sets), n_sets - 1))
    alpha = 1 - confidence
    k = t_quantile(alpha, n - 1) ** 2 / (n - 1)
    x = (diff - delta) ** 2
    # the paired t on the items' set means (sets as if fixed): x <= t_I^2 s2(delta) / n with
    # s2(delta) = s2 + n x / (n-1), so x <= t_I^2 s2 / (n (1 - k))
    with np.errstate(divide="ignore", invalid="ignore"):
        x_max = k * (n - 1) * s2 / (n * (1 - k))
    s2_delta = s2 + n * x / (n - 1)
    p = _banerjee_p(x, [(s2_delta / n, n - 1)])
    if sets:
        # crossed: x <= t_I^2 v_I(delta) + sum_j t_j^2 v_j with
        # v_I(delta) = max(s2(delta) - residual, 0) / n; below x0 the item part is 0
        t_sets = banerjee_half_width(sets, alpha) ** 2
        x0 = (residual - s2) * (n - 1) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            crossed = np.where(t_sets < x0, t_sets, (t_sets - k * x0) / (1 - k))
        x_max = np.maximum(x_max, crossed)
        v_item = np.maximum(s2_delta - residual, 0.0) / n
        p = np.maximum(p, _banerjee_p(x, [(v_item, n - 1), *sets]))
    half = np.where(k >= 1, np.inf, np.sqrt(np.maximum(x_max, 0.0)))
    lo, hi = np.maximum(diff - half, -1.0), np.minimum(diff + half, 1.0)
    return CrossedTest(diff, lo, hi, p)


def _banerjee_p(x: np.ndarray, parts: Sequence[Part], steps: int = 64) -> np.ndarray:
    """The level ``alpha`` at which Banerjee's half-width equals ``sqrt(x)`` (it falls as
    ``alpha`` grows), by bisection on ``log alpha`` in [P_FLOOR, 1]; 1 where ``x`` is 0."""
    from scipy.stats import t

    x = np.asarray(x, dtype=float)
    live = [(v, df) for v, df in parts if np.any(np.asarray(v) > 0)]
    if len(live) == 1:  # one part: the t test itself
        v, df = live[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = np.where(v > 0, np.sqrt(x / np.where(v > 0, v, 1)), np.inf)
        p = np.where(x > 0, 2 * t.sf(stat, df), 1.0)
        return np.maximum(p, P_FLOOR)
    lo = np.full(x.shape, np.log(P_FLOOR))  # rejects at lo (half-width below sqrt(x))?
    hi = np.zeros(x.shape)
    for _ in range(steps):
        mid = (lo + hi) / 2
        rejects = banerjee_half_width(live, np.exp(mid)) ** 2 < x
        hi, lo = np.where(rejects, mid, hi), np.where(rejects, lo, mid)
    p = np.exp(hi)
    at_floor = banerjee_half_width(live, P_FLOOR) ** 2 < x
    return np.where(x > 0, np.where(at_floor, P_FLOOR, p), 1.0)


def adjust(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with ``p_adjusted`` by Holm over all of them (one family)."""
    adjusted = holm([c.p_value for c in comparisons])
    how = f"holm over {len(comparisons)} comparisons"
    return [c.replace(p_adjusted=float(q), adjustment=how) for c, q in zip(comparisons, adjusted)]


#: a setting's answers: ``{(seed, item id): {demonstration set: correct}}``
Answers = Mapping[tuple[int, str], Mapping[int, bool]]


def _matrix(answers: Answers, keys: Sequence[tuple[int, str]]) -> np.ndarray:
    """``(sets, items)`` 0/1 matrix of ``answers`` on ``keys``; row s holds set s of each
    item's seed (the sets of one item, in order)."""
    per = [sorted(answers[k].items()) for k in keys]
    n_sets = min(len(p) for p in per)
    return np.array([[float(p[s][1]) for p in per] for s in range(n_sets)])  # (S, n)


def compare_settings(
    model: str,
    task: str,
    variant: str,
    a: tuple[str, int, Answers],
    b: tuple[str, int, Answers],
) -> Comparison | None:
    """Compare two settings ``(method, shots, answers)`` on their common items (unadjusted)."""
    keys = sorted(set(a[2]) & set(b[2]))
    if not keys:
        return None
    ma, mb = _matrix(a[2], keys), _matrix(b[2], keys)
    ca, cb = ma.mean(axis=0), mb.mean(axis=0)  # per-item scores (mean over sets)
    a_only = int(((ca == 1) & (cb == 0)).sum())
    b_only = int(((cb == 1) & (ca == 0)).sum())
    test = crossed_test(ma, mb)
    one = ma.shape[0] == 1 and mb.shape[0] == 1
    per_set = None
    if not one and min(ma.shape[0], mb.shape[0]) == 1:
        many, single = (ma, mb[0]) if ma.shape[0] > 1 else (mb, ma[0])
        per_set = [
            mcnemar_exact(int(((row == 1) & (single == 0)).sum()),
                          int(((row == 0) & (single == 1)).sum()))
            for row in many
        ]  # fmt: skip
    return Comparison(
        model=model,
        task=task,
        variant=variant,
        a_method=a[0],
        a_shots=a[1],
        b_method=b[0],
        b_shots=b[1],
        n=len(keys),
        accuracy_a=float(ma.mean()),
        accuracy_b=float(mb.mean()),
        diff=float(test.diff),
        ci_low=float(test.ci_low),
        ci_high=float(test.ci_high),
        a_only=a_only,
        b_only=b_only,
        p_value=float(test.p_value),
        seeds=sorted({s for s, _ in keys}),
        interval=INTERVAL,
        test=TEST if one else TEST_SETS,
        a_sets=ma.shape[0],
        b_sets=mb.shape[0],
        p_values_per_set=per_set,
        test_name=PAIRED_T if one else CROSSED_T,
        p_mcnemar=mcnemar_exact(a_only, b_only) if one else None,
    )


def constant_answers(targets: Mapping[tuple[int, str], str | None]) -> Answers | None:
    """The constant predictor's answers on items keyed ``(seed, id)`` with their targets:
    right where the target is its seed's most frequent one (``None``: a target is unknown)."""
    by_seed: dict[int, list[str | None]] = {}
    for (seed, _), target in sorted(targets.items()):
        by_seed.setdefault(seed, []).append(target)
    answer = {seed: constant_answer_of(ts) for seed, ts in by_seed.items()}
    if any(a is None for a in answer.values()):
        return None
    return {key: {0: target == answer[key[0]]} for key, target in targets.items()}


def paired_comparisons(predictions: Iterable[Prediction]) -> list[Comparison]:
    """Every ICL shot count against the 0-shot baseline and each fine-tuned model, each
    fine-tuned model against the baseline, and each ICL shot count and fine-tuned model
    against the constant answer, per (model, task, variant), on the items both answered;
    then Holm-adjusted over all of them. ``predictions`` are the records of
    ``predictions.jsonl`` (with ``method``); a fine-tuned model is compared as its final model
    (rows of a ``checkpoint`` are skipped, as the headline reports the final model too), and
    only test items count (held-out items choose k, see
    :func:`iclft.icl.evaluate.heldout_items`)."""
    settings: dict[tuple[str, str, str], dict[tuple[str, int], dict]] = {}
    targets: dict[tuple[str, str, str], dict[tuple[int, str], str | None]] = {}
    for p in predictions:
        if p.method is None or p.checkpoint:  # old rows; checkpoints
            continue
        if p.split != "test":
            continue
        group = settings.setdefault((p.model, p.task, p.variant), {})
        item = group.setdefault((p.method, int(p.shots)), {})
        item.setdefault((int(p.seed), p.id), {})[int(p.demo_set)] = bool(p.correct)
        targets.setdefault((p.model, p.task, p.variant), {})[(int(p.seed), p.id)] = p.target
    out: list[Comparison] = []
    for (model, task, variant), group in settings.items():
        base = [(BASELINE, 0)] if (BASELINE, 0) in group else []
        icl = sorted(k for k in group if k[0] == ICL)
        ft = [k for k in group if k[0] not in (ICL, BASELINE)]
        pairs = [(i, o) for i in icl for o in (*base, *ft)] + [(f, b) for f in ft for b in base]
        for x, y in pairs:
            c = compare_settings(model, task, variant, (*x, group[x]), (*y, group[y]))
            if c is not None:
                out.append(c)
        constant = constant_answers(targets[(model, task, variant)])
        if constant is not None:
            for x in (*icl, *ft):
                c = compare_settings(model, task, variant, (*x, group[x]), (CONSTANT, 0, constant))
                if c is not None:
                    out.append(c)
    return adjust(out)
