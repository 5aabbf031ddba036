"""Paired comparisons: exact McNemar on hand-computed tables; the paired t and crossed-design
tests against their formulas, their interval as the test's inversion, and their size and
coverage on synthetic crossed data of known truth; Holm's adjustment (by hand, against the
step-down procedure, family-wise error on simulated families); the constant-answer reference;
pairing by item (the report's use of them: tests/report)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from iclft.icl.compare import (
    CROSSED_T,
    PAIRED_T,
    TEST_SETS,
    compare_settings,
    crossed_test,
    mcnemar_exact,
    paired_comparisons,
)
from iclft.records import CONSTANT, Comparison, Prediction
from iclft.stats import holm

# ----- exact McNemar (kept beside the test, p_mcnemar) -----------------------------------------


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


# ----- the test against its formulas ------------------------------------------------------------


def _one_set(a_only, b_only, both, neither):
    """``(1, n)`` tables of two settings with the given counts of each kind of item."""
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    return np.array([a], float), np.array([b], float)


@pytest.mark.parametrize(
    "a_only,b_only,both,neither", [(12, 4, 30, 54), (3, 0, 10, 7), (9, 9, 1, 1)]
)
def test_one_set_is_the_paired_t_about_zero_mcnemars_statistic(a_only, b_only, both, neither):
    """With one set per side, t = mean(d) / sqrt(sum d_i^2 / (n (n-1))): McNemar's statistic
    (b - c) / sqrt(b + c) times sqrt((n-1)/n), referred to t with n-1 df."""
    a, b = _one_set(a_only, b_only, both, neither)
    n = a.shape[1]
    t = crossed_test(a, b)
    stat = abs(a_only - b_only) / np.sqrt(a_only + b_only) * np.sqrt((n - 1) / n)
    assert float(t.diff) == pytest.approx((a_only - b_only) / n)
    assert float(t.p_value) == pytest.approx(min(1.0, 2 * stats.t.sf(stat, n - 1)), rel=1e-9)


def test_one_set_approaches_mcnemar_with_many_items():
    a, b = _one_set(130, 90, 800, 980)
    p = float(crossed_test(a, b).p_value)
    chi2 = stats.chi2.sf((130 - 90) ** 2 / (130 + 90), 1)  # McNemar's chi-square, no correction
    assert p == pytest.approx(chi2, rel=0.02)  # t with 1999 df vs the normal
    assert p == pytest.approx(mcnemar_exact(130, 90), rel=0.2)  # exact: continuity-like


def _random_tables(rng, sa, sb, n):
    base = rng.random((1, n)) < 0.5
    a = (rng.random((sa, n)) < np.where(base, 0.8, 0.4)).astype(float)
    b = (rng.random((sb, n)) < np.where(base, 0.6, 0.3)).astype(float)
    return a, b


@pytest.mark.parametrize("sa,sb", [(1, 1), (3, 1), (5, 1), (1, 4), (3, 5)])
def test_the_interval_is_the_set_of_differences_the_test_does_not_reject(sa, sb):
    """p(delta) is 0.05 at both ends of the 95% interval, above inside, below outside: the
    interval and the p-value are one test."""
    rng = np.random.default_rng(sa * 10 + sb)
    a, b = _random_tables(rng, sa, sb, 60)
    t = crossed_test(a, b)
    lo, hi = float(t.ci_low), float(t.ci_high)
    assert -1 < lo < float(t.diff) < hi < 1
    for end in (lo, hi):
        assert float(crossed_test(a, b, delta=end).p_value) == pytest.approx(0.05, abs=1e-6)
    assert float(crossed_test(a, b, delta=(lo + hi) / 2).p_value) > 0.05
    for out in (lo - 0.02, hi + 0.02):
        assert float(crossed_test(a, b, delta=out).p_value) < 0.05
    assert (float(t.p_value) < 0.05) == (lo > 0 or hi < 0)


def test_few_items_give_no_decision_and_ties_no_p_of_zero():
    a, b = _one_set(1, 0, 0, 0)
    t = crossed_test(a, b)
    assert (float(t.p_value), float(t.ci_low), float(t.ci_high)) == (1.0, -1.0, 1.0)
    same = np.ones((3, 20))
    t = crossed_test(same, same[:1])
    assert float(t.p_value) == 1.0 and float(t.diff) == 0.0
    a, b = _one_set(40, 0, 0, 0)  # every item one way: tiny but positive p
    assert 0 < float(crossed_test(a, b).p_value) < 1e-6


# ----- calibration on synthetic crossed data of known truth -------------------------------------

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(80)


def _population(mu: float, sd: float) -> float:
    """E[expit(mu + sd Z)], Z standard normal: a setting's accuracy over new items and sets."""
    return float((_GH_W / (1 + np.exp(-(mu + sd * _GH_X)))).sum() / _GH_W.sum())


#: logit-scale spreads: set effect (ICL's demonstration sets), item difficulty shared by both
#: settings, set-by-item interaction, the other setting's own item noise
SD_SET, SD_ITEM, SD_INT, SD_OWN = 0.8, 1.0, 0.5, 0.7


def _crossed_pair(rng, reps, sets, n, mu_a, mu_b):
    """``reps`` replications of ICL over ``sets`` demonstration sets and a one-set setting
    (baseline or fine-tuned model) on the same ``n`` items, as 0/1 tables."""
    item = rng.normal(0, SD_ITEM, (reps, 1, n))
    logit_a = (mu_a + rng.normal(0, SD_SET, (reps, sets, 1)) + item
               + rng.normal(0, SD_INT, (reps, sets, n)))  # fmt: skip
    logit_b = mu_b + item + rng.normal(0, SD_OWN, (reps, 1, n))
    a = (rng.random((reps, sets, n)) < 1 / (1 + np.exp(-logit_a))).astype(float)
    b = (rng.random((reps, 1, n)) < 1 / (1 + np.exp(-logit_b))).astype(float)
    return a, b


def _truths(mu_a: float, diff: float) -> tuple[float, float]:
    """``(mu_b, true difference)``: the baseline's logit mean whose population accuracy is
    ``diff`` below ICL's."""
    acc_a = _population(mu_a, np.sqrt(SD_SET**2 + SD_ITEM**2 + SD_INT**2))
    sd_b = np.sqrt(SD_ITEM**2 + SD_OWN**2)
    mu_b = optimize.brentq(lambda m: _population(m, sd_b) - (acc_a - diff), -10, 10)
    return mu_b, acc_a - _population(mu_b, sd_b)


@pytest.mark.parametrize("sets", [3, 5])
def test_the_crossed_test_holds_its_size_and_coverage_with_few_sets(sets):
    """1000 replications of 199 items with set, item, interaction and noise effects: at a true
    null the test rejects at most 6% (nominal 5%), and the interval covers a true difference
    of 0.10 at least 93% of the time. The paired t that ignores the set part (the sets' mean
    taken as fixed) rejects the same nulls far more often: the set part is what holds size."""
    rng = np.random.default_rng(100 + sets)
    mu_b, truth = _truths(0.5, 0.0)
    a, b = _crossed_pair(rng, 1000, sets, 199, 0.5, mu_b)
    t = crossed_test(a, b)
    size = float((t.p_value < 0.05).mean())
    assert size <= 0.06, size
    assert np.array_equal(t.p_value < 0.05, (t.ci_low > 0) | (t.ci_high < 0))
    blind = crossed_test(a.mean(axis=-2, keepdims=True), b)  # sets as if fixed
    assert float((blind.p_value < 0.05).mean()) > 0.15
    mu_b, truth = _truths(0.5, 0.10)
    a, b = _crossed_pair(rng, 1000, sets, 199, 0.5, mu_b)
    t = crossed_test(a, b)
    coverage = float(((t.ci_low <= truth) & (truth <= t.ci_high)).mean())
    assert coverage >= 0.93, coverage


# ----- Holm -------------------------------------------------------------------------------------


def test_holm_by_hand_and_against_the_step_down_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    # sorted 0.005, 0.01, 0.03, 0.04, 0.2 times 5, 4, 3, 2, 1: 0.025, 0.04, 0.09, 0.08, 0.2;
    # running maximum: 0.025, 0.04, 0.09, 0.09, 0.2
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(12) ** 3
        q = np.asarray(holm(p))
        assert np.all(q >= p) and np.all(q <= 1)
        for level in (0.01, 0.05, 0.1, 0.3):
            # Holm's procedure: walk up the sorted p, reject while p_(j) <= level / (m - j)
            rejected = np.zeros(p.size, bool)
            for j, i in enumerate(np.argsort(p)):
                if p[i] > level / (p.size - j):
                    break
                rejected[i] = True
            assert np.array_equal(q <= level, rejected)


def test_holm_bounds_the_family_wise_error_over_144_true_nulls():
    """300 families shaped like a run (16 model/task/variant groups, each with 4 ICL shot
    counts over 3 sets against a baseline and a fine-tuned model, and the fine-tuned model
    against the baseline: 144 comparisons), every null true: Holm-adjusted, some comparison
    of a family is called significant in at most 6% of families; unadjusted, in most."""
    rng = np.random.default_rng(7)
    fams, groups, n = 300, 16, 60
    mu_b, _ = _truths(0.3, 0.0)
    item = rng.normal(0, SD_ITEM, (fams, groups, 1, 1, n))
    logit_icl = (0.3 + rng.normal(0, SD_SET, (fams, groups, 4, 3, 1)) + item
                 + rng.normal(0, SD_INT, (fams, groups, 4, 3, n)))  # fmt: skip
    icl = (rng.random(logit_icl.shape) < 1 / (1 + np.exp(-logit_icl))).astype(float)

    def one_set():
        logit = mu_b + item[:, :, 0] + rng.normal(0, SD_OWN, (fams, groups, 1, n))
        return (rng.random(logit.shape) < 1 / (1 + np.exp(-logit))).astype(float)

    base, ft = one_set(), one_set()  # (fams, groups, 1, n)
    p = np.concatenate(
        [
            crossed_test(icl, base[:, :, None]).p_value,  # (fams, groups, 4)
            crossed_test(icl, ft[:, :, None]).p_value,
            crossed_test(ft, base).p_value[..., None],
        ],
        axis=-1,
    ).reshape(fams, -1)
    assert p.shape == (fams, 144)
    adjusted = np.array([holm(f) for f in p])
    fwer = float((adjusted < 0.05).any(axis=1).mean())
    assert fwer <= 0.06, fwer
    assert float((p < 0.05).any(axis=1).mean()) > 0.5


# ----- comparisons of a run -------------------------------------------------------------------


def pred_row(method, shots, seed, i, correct, variant="clean", target="1"):
    return Prediction(model="m", task="t", variant=variant, method=method, shots=shots,
                      seed=seed, id=f"t-{variant}-{seed}-{i}", correct=correct,
                      target=target)  # fmt: skip


def test_paired_comparisons_pair_items_by_seed_and_id():
    base = [pred_row("baseline", 0, s, i, i < 2) for s in (0, 1) for i in range(5)]
    icl = [pred_row("icl", 4, s, i, i < 4) for s in (0, 1) for i in range(5)]
    ft = [pred_row("ft-full", 0, s, i, i in (0, 4)) for s in (0, 1) for i in range(5)]
    ft.append(pred_row("ft-full", 0, 2, 0, True))  # an item no other setting answered: unpaired
    # a checkpoint of the same method (eval_checkpoints): compared as the final model only
    ft += [pred_row("ft-full", 0, s, i, True).replace(step=1, checkpoint="ck-1")
           for s in (0, 1) for i in range(5)]  # fmt: skip
    comps = {((c.a_method, c.a_shots), (c.b_method, c.b_shots)): c
             for c in paired_comparisons(base + icl + ft)}  # fmt: skip
    assert set(comps) == {
        (("icl", 4), ("baseline", 0)),
        (("icl", 4), ("ft-full", 0)),
        (("ft-full", 0), ("baseline", 0)),
        (("icl", 4), (CONSTANT, 0)),
        (("ft-full", 0), (CONSTANT, 0)),
    }
    assert comps[(("icl", 4), (CONSTANT, 0))].accuracy_b == 1.0  # every target is "1"
    c = comps[(("icl", 4), ("baseline", 0))]
    assert (c.n, c.a_only, c.b_only, c.diff) == (10, 4, 0, pytest.approx(0.4))
    assert c.p_mcnemar == pytest.approx(2 / 16) and c.seeds == [0, 1]
    assert c.test_name == PAIRED_T and c.p_adjusted is not None and c.p_adjusted >= c.p_value
    f = comps[(("icl", 4), ("ft-full", 0))]  # icl right on 0-3, ft right on 0 and 4
    assert (f.n, f.a_only, f.b_only) == (10, 6, 2)
    flipped = f.flipped()
    assert (flipped.diff, flipped.ci_low, flipped.a_only) == (-f.diff, -f.ci_high, 2)
    assert (flipped.p_value, flipped.p_adjusted) == (f.p_value, f.p_adjusted)


def test_learners_are_compared_with_the_constant_answer_in_the_same_holm_family():
    """Targets "a" on 3 of 5 items of seed 0 and "b" on 4 of 5 of seed 1: the constant
    predictor answers each seed's majority and scores 7/10; ICL and the fine-tuned model are
    compared with it, the baseline is not, and every p is adjusted over all five tests."""
    targets = {0: ["a", "a", "a", "b", "b"], 1: ["b", "b", "a", "b", "b"]}
    rows = []
    for s in (0, 1):
        for i, t in enumerate(targets[s]):
            rows.append(pred_row("baseline", 0, s, i, False, target=t))
            rows.append(pred_row("icl", 2, s, i, True, target=t))
            rows.append(pred_row("ft-full", 0, s, i, i == 0, target=t))
    comps = paired_comparisons(rows)
    pairs = {((c.a_method, c.a_shots), (c.b_method, c.b_shots)): c for c in comps}
    assert set(pairs) == {
        (("icl", 2), ("baseline", 0)), (("icl", 2), ("ft-full", 0)),
        (("ft-full", 0), ("baseline", 0)),
        (("icl", 2), (CONSTANT, 0)), (("ft-full", 0), (CONSTANT, 0)),
    }  # fmt: skip
    const = pairs[(("icl", 2), (CONSTANT, 0))]
    assert const.accuracy_b == pytest.approx(0.7) and (const.a_only, const.b_only) == (3, 0)
    ft = pairs[(("ft-full", 0), (CONSTANT, 0))]  # ft right on item 0 of each seed only
    assert ft.accuracy_b == pytest.approx(0.7) and ft.diff == pytest.approx(0.2 - 0.7)
    raw = [c.p_value for c in comps]
    assert [c.p_adjusted for c in comps] == pytest.approx(list(holm(raw)))
    assert {c.adjustment for c in comps} == {"holm over 5 comparisons"}
    # rows of runs written before predictions carried targets: no constant comparison
    old = [r.replace(target=None) for r in rows]
    assert all(c.b_method != CONSTANT for c in paired_comparisons(old))


def test_set_aware_comparison_widens_with_set_variance_and_keeps_per_set_mcnemar():
    """ICL over 6 sets whose accuracies differ a lot vs a 0-shot setting: the crossed interval
    includes the set part (wider than set 0 alone), and every set has its own exact McNemar
    p-value."""
    rng = np.random.default_rng(5)
    a, b = _crossed_pair(rng, 1, 6, 80, 0.5, 0.0)
    icl, base = a[0], b[0]

    def answers(m):
        return {(0, f"q{i}"): {s: bool(m[s, i]) for s in range(m.shape[0])}
                for i in range(m.shape[1])}  # fmt: skip

    c = compare_settings(
        "m", "t", "clean", ("icl", 4, answers(icl)), ("baseline", 0, answers(base))
    )
    assert c is not None and (c.a_sets, c.b_sets, c.test_name) == (6, 1, CROSSED_T)
    assert c.test == TEST_SETS
    assert c.diff == pytest.approx(icl.mean() - base.mean()) and c.p_mcnemar is None
    assert c.p_values_per_set is not None and len(c.p_values_per_set) == 6
    one = compare_settings(
        "m", "t", "clean", ("icl", 4, answers(icl[:1])), ("baseline", 0, answers(base))
    )
    assert one is not None and one.p_values_per_set is None and one.test_name == PAIRED_T
    assert c.ci_high - c.ci_low > one.ci_high - one.ci_low
    assert "crossed t p" in c.text() and "paired t p" in one.text()
    flipped = c.flipped()
    assert (flipped.a_sets, flipped.b_sets, flipped.diff) == (1, 6, -c.diff)


def test_old_comparison_rows_still_read_and_decide_on_their_own_p():
    old = {"model": "m", "task": "t", "variant": "clean", "a_method": "icl", "a_shots": 4,
           "b_method": "baseline", "b_shots": 0, "n": 10, "accuracy_a": 0.6, "accuracy_b": 0.2,
           "diff": 0.4, "ci_low": 0.1, "ci_high": 0.7, "a_only": 4, "b_only": 0,
           "p_value": 0.0, "seeds": [0], "n_boot": 2000, "interval": "x", "test": "y",
           "a_sets": 3, "b_sets": 1}  # fmt: skip
    c = Comparison.from_json(old)
    assert (c.p_adjusted, c.test_name, c.name, c.sign) == (None, None, "bootstrap", 1)
    assert "bootstrap p<0.001" in c.text() and "p=" not in c.text()
    assert c.to_json()["n_boot"] == 2000
