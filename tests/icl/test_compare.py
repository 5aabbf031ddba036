"""Paired comparisons: exact McNemar on hand-computed tables, the paired bootstrap's coverage
where the truth is known, pairing by item (the report's use of them: tests/report)."""

from __future__ import annotations

import numpy as np
import pytest

from iclft.icl.compare import mcnemar_exact, paired_bootstrap, paired_comparisons
from iclft.records import Prediction


@pytest.mark.parametrize(
    "a_only,b_only,p",
    [
        (0, 0, 1.0),
        (5, 0, 2 / 2**5),  # all five discordant pairs one way
        (1, 4, 2 * (1 + 5) / 2**5),
        (10, 2, 2 * (1 + 12 + 66) / 2**12),
        (3, 3, 1.0),  # 2 * P[X <= 3] = 1.3125, capped
    ],
)
def test_mcnemar_exact_matches_the_binomial_by_hand(a_only, b_only, p):
    assert mcnemar_exact(a_only, b_only) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(b_only, a_only) == pytest.approx(p, rel=1e-12)


def test_paired_bootstrap_covers_the_true_difference_about_95_percent():
    """200 synthetic data sets of 200 correlated pairs with P(a)=0.7, P(b)=0.5: the true
    difference 0.2 must fall inside about 95% of the intervals."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):
        u = rng.random(200)
        a = u < 0.7
        b = np.where(rng.random(200) < 0.6, u < 0.5, rng.random(200) < 0.5)  # correlated with a
        lo, hi = paired_bootstrap(a, b, n_boot=1000, rng=rng)
        covered += lo <= 0.2 <= hi
    assert 0.90 <= covered / 200 <= 0.99


def test_pairing_beats_independent_intervals_on_correlated_settings():
    """b is a with 6 extra items right: the paired interval excludes 0, the unpaired Wilson
    intervals of n=60 overlap (why the report uses the paired test)."""
    from iclft.icl.metrics import wilson_interval

    a = np.array([True] * 24 + [False] * 36)
    b = a.copy()
    b[24:30] = True
    lo, hi = paired_bootstrap(b, a, n_boot=2000, rng=np.random.default_rng(1))
    assert 0 < lo <= 0.1 <= hi
    assert wilson_interval(30, 60)[0] < wilson_interval(24, 60)[1]  # overlap


def pred_row(method, shots, seed, i, correct, variant="clean"):
    return Prediction(model="m", task="t", variant=variant, method=method, shots=shots,
                      seed=seed, id=f"t-{variant}-{seed}-{i}", correct=correct)  # fmt: skip


def test_paired_comparisons_pair_items_by_seed_and_id():
    base = [pred_row("baseline", 0, s, i, i < 2) for s in (0, 1) for i in range(5)]
    icl = [pred_row("icl", 4, s, i, i < 4) for s in (0, 1) for i in range(5)]
    ft = [pred_row("ft-full", 0, s, i, i in (0, 4)) for s in (0, 1) for i in range(5)]
    ft.append(pred_row("ft-full", 0, 2, 0, True))  # an item no other setting answered: unpaired
    # a checkpoint of the same method (eval_checkpoints): compared as the final model only
    ft += [pred_row("ft-full", 0, s, i, True).replace(step=1, checkpoint="ck-1")
           for s in (0, 1) for i in range(5)]  # fmt: skip
    comps = {((c.a_method, c.a_shots), (c.b_method, c.b_shots)): c
             for c in paired_comparisons(base + icl + ft, n_boot=200)}  # fmt: skip
    assert set(comps) == {
        (("icl", 4), ("baseline", 0)),
        (("icl", 4), ("ft-full", 0)),
        (("ft-full", 0), ("baseline", 0)),
    }
    c = comps[(("icl", 4), ("baseline", 0))]
    assert (c.n, c.a_only, c.b_only, c.diff) == (10, 4, 0, pytest.approx(0.4))
    assert c.p_value == pytest.approx(2 / 16) and c.seeds == [0, 1]
    f = comps[(("icl", 4), ("ft-full", 0))]  # icl right on 0-3, ft right on 0 and 4
    assert (f.n, f.a_only, f.b_only) == (10, 6, 2)
    flipped = f.flipped()
    assert (flipped.diff, flipped.ci_low, flipped.a_only) == (-f.diff, -f.ci_high, 2)
