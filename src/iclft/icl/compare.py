"""Paired comparisons of two settings scored on the same items.

ICL and every fine-tuned model answer the *same* test items, so their difference is measured
pairwise, not by whether two independent intervals overlap:

* difference in accuracy ``acc_a - acc_b`` with a 95% **paired bootstrap** interval: resample
  items (pairs) with replacement, ``n_boot`` times, and take the 2.5th and 97.5th percentiles
  of the resampled difference;
* the **exact McNemar** test on the discordant pairs: with ``a_only`` items only ``a`` gets
  right and ``b_only`` items only ``b`` does, under "no difference" ``a_only`` is
  Binomial(a_only + b_only, 1/2); the two-sided p-value is ``min(1, 2 P[X <= min(a_only,
  b_only)])`` (scipy's exact binomial test), 1 when there is no discordant pair.

Pairs are keyed by ``(seed, item id)``: with several seeds the items of every seed are pooled.

With several demonstration sets (``demo_sets > 1``), a setting's score on an item is its mean
over the sets, and the interval comes from the two-level bootstrap of
:func:`iclft.icl.metrics.two_level_means`, applied to the paired difference: each replicate
resamples the items once (shared by both settings) and each setting's demonstration sets
(row s of a setting pools set s of every seed). The p-value is then the bootstrap's two-sided
p (``2 min(P*[d <= 0], P*[d >= 0])``, at most 1), consistent with the interval; the exact
McNemar p-value of every single set against the other setting is kept in
``p_values_per_set``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from iclft.records import BASELINE, ICL, Comparison, Prediction

#: how the interval and the p-value are made (written into every comparison row)
INTERVAL = "paired bootstrap over items, 95% percentile"
TEST = "exact McNemar (two-sided binomial on discordant pairs)"
INTERVAL_SETS = "two-level paired bootstrap: demonstration sets, then items, 95% percentile"
TEST_SETS = "two-level paired bootstrap p-value (McNemar per set in p_values_per_set)"


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    from scipy.stats import binomtest

    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(binomtest(min(a_only, b_only), n, 0.5).pvalue)


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], *, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% percentile interval of ``mean(a) - mean(b)`` over items resampled in pairs."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (n,) per-pair difference
    if d.size == 0:
        return (float("nan"), float("nan"))
    idx = rng.integers(0, d.size, size=(n_boot, d.size))  # (n_boot, n) resampled pairs
    means = d[idx].mean(axis=1)  # (n_boot,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


#: a setting's answers: ``{(seed, item id): {demonstration set: correct}}``
Answers = Mapping[tuple[int, str], Mapping[int, bool]]


def _matrix(answers: Answers, keys: Sequence[tuple[int, str]]) -> np.ndarray:
    """``(sets, items)`` 0/1 matrix of ``answers`` on ``keys``; row s holds set s of each
    item's seed (the sets of one item, in order)."""
    per = [sorted(answers[k].items()) for k in keys]
    n_sets = min(len(p) for p in per)
    return np.array([[float(p[s][1]) for p in per] for s in range(n_sets)])  # (S, n)


def paired_two_level(
    a: np.ndarray, b: np.ndarray, *, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap distribution of ``mean(a) - mean(b)`` for ``(sets, items)`` matrices on the
    same items: items resampled once per replicate for both, sets of each side apart."""
    from iclft.icl.metrics import resample_counts

    n = a.shape[1]
    v = resample_counts(n, n_boot, rng)  # (B, n) shared item weights
    wa = resample_counts(a.shape[0], n_boot, rng)  # (B, Sa)
    wb = resample_counts(b.shape[0], n_boot, rng)  # (B, Sb)
    ma = np.einsum("bs,sn,bn->b", wa, a, v) / (a.shape[0] * n)
    mb = np.einsum("bs,sn,bn->b", wb, b, v) / (b.shape[0] * n)
    return ma - mb  # (B,)


def compare_settings(
    model: str,
    task: str,
    variant: str,
    a: tuple[str, int, Answers],
    b: tuple[str, int, Answers],
    *,
    n_boot: int,
    rng: np.random.Generator,
) -> Comparison | None:
    """Compare two settings ``(method, shots, answers)`` on their common items."""
    keys = sorted(set(a[2]) & set(b[2]))
    if not keys:
        return None
    ma, mb = _matrix(a[2], keys), _matrix(b[2], keys)
    n = len(keys)
    acc_a, acc_b = float(ma.mean()), float(mb.mean())
    ca, cb = ma.mean(axis=0), mb.mean(axis=0)  # per-item scores (mean over sets)
    a_only = int(sum(x == 1 and y == 0 for x, y in zip(ca, cb)))
    b_only = int(sum(y == 1 and x == 0 for x, y in zip(ca, cb)))
    per_set = None
    if ma.shape[0] == 1 and mb.shape[0] == 1:
        lo, hi = paired_bootstrap(ma[0] > 0, mb[0] > 0, n_boot=n_boot, rng=rng)
        p, interval, test = mcnemar_exact(a_only, b_only), INTERVAL, TEST
    else:
        d = paired_two_level(ma, mb, n_boot=n_boot, rng=rng)
        lo, hi = (float(x) for x in np.percentile(d, [2.5, 97.5]))
        p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
        interval, test = INTERVAL_SETS, TEST_SETS
        many, one = (ma, mb) if ma.shape[0] > 1 else (mb, ma)
        per_set = (
            [
                mcnemar_exact(
                    int(((row == 1) & (one.mean(axis=0) == 0)).sum()),
                    int(((row == 0) & (one.mean(axis=0) == 1)).sum()),
                )
                for row in many
            ]
            if one.shape[0] == 1
            else None
        )
    return Comparison(
        model=model,
        task=task,
        variant=variant,
        a_method=a[0],
        a_shots=a[1],
        b_method=b[0],
        b_shots=b[1],
        n=n,
        accuracy_a=acc_a,
        accuracy_b=acc_b,
        diff=acc_a - acc_b,
        ci_low=lo,
        ci_high=hi,
        a_only=a_only,
        b_only=b_only,
        p_value=p,
        seeds=sorted({s for s, _ in keys}),
        n_boot=n_boot,
        interval=interval,
        test=test,
        a_sets=ma.shape[0],
        b_sets=mb.shape[0],
        p_values_per_set=per_set,
    )


def paired_comparisons(
    predictions: Iterable[Prediction], *, n_boot: int = 2000, seed: int = 0
) -> list[Comparison]:
    """Every ICL shot count against the 0-shot baseline and each fine-tuned model, and each
    fine-tuned model against the baseline, per (model, task, variant), on the items both
    answered. ``predictions`` are the records of ``predictions.jsonl`` (with ``method``); a
    fine-tuned model is compared as its final model (rows of a ``checkpoint`` are skipped, as
    the headline reports the final model too), and only test items count (held-out items
    choose k, see :func:`iclft.icl.evaluate.heldout_items`)."""
    settings: dict[tuple[str, str, str], dict[tuple[str, int], dict]] = {}
    for p in predictions:
        if p.method is None or p.checkpoint:  # old rows; checkpoints
            continue
        if p.split != "test":
            continue
        group = settings.setdefault((p.model, p.task, p.variant), {})
        item = group.setdefault((p.method, int(p.shots)), {})
        item.setdefault((int(p.seed), p.id), {})[int(p.demo_set)] = bool(p.correct)
    rng = np.random.default_rng(seed)
    out: list[Comparison] = []
    for (model, task, variant), group in settings.items():
        base = [(BASELINE, 0)] if (BASELINE, 0) in group else []
        icl = sorted(k for k in group if k[0] == ICL)
        ft = [k for k in group if k[0] not in (ICL, BASELINE)]
        pairs = [(i, o) for i in icl for o in (*base, *ft)] + [(f, b) for f in ft for b in base]
        for x, y in pairs:
            c = compare_settings(
                model, task, variant, (*x, group[x]), (*y, group[y]), n_boot=n_boot, rng=rng
            )
            if c is not None:
                out.append(c)
    return out
