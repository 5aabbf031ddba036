"""The circuit decisions on synthetic effects of known truth: size and power of the shift test,
size of the ICL-vs-FT comparison, size of the gap guard, and the Holm family of an analysis.

Each setting's per-pair effects are drawn as raw[p] = gap[p] * (E + u_p + noise), with E the
setting's true effect profile, u_p a pair's own deviation shared by every setting (pairs differ
in how hard they are) and the noise the setting's own. "No shift" is E_a = E_b."""

from __future__ import annotations

import numpy as np
import pytest

from iclft.analysis.circuits import (
    EffectTable,
    circuit_shift,
    compare_shifts,
    debiased_cosine_distance,
    gap_check,
    normalised_effects,
    shift_test,
)
from iclft.analysis.patching import PairEffects
from iclft.stats import holm

LAYERS, HEADS = 4, 4
NAMES = tuple(
    name
    for layer in range(LAYERS)
    for name in (
        *(f"L{layer}.H{h}" for h in range(HEADS)),
        f"L{layer}.MLP",
        f"L{layer}.RESID",
    )
)
C = len(NAMES)
REPS = 300  # seeded replications per calibration
#: replications of the shift test's size: its size is 0.05 (measured 0.0475-0.0503 over 4000),
#: so 300 would exceed 0.06 by chance one time in six; 1000 keep that chance near 8%
REPS_SHIFT_SIZE = 1000
NOMINAL = 0.05


def _profile(rng: np.random.Generator) -> np.ndarray:
    """A sparse effect profile: a few strong components over a weak background."""
    return rng.normal(size=C) * (rng.random(C) < 0.3) * 2 + 0.1


#: the components shifts are measured on (residual streams are left out)
KEEP = np.array([not n.endswith("RESID") for n in NAMES])


def _orthogonal(rng: np.random.Generator, *against: np.ndarray) -> np.ndarray:
    """A unit direction over heads and MLPs orthogonal there to every vector in ``against``
    (so that two such moves of the same size are shifts of the same size)."""
    v = rng.normal(size=C) * KEEP
    for a in against:
        a = a * KEEP
        v -= (v @ a) / (a @ a) * a
    return v / np.linalg.norm(v)


def _table(rng, effect, shared, sigma=1.0, gap_scale=1.0, tails=None) -> EffectTable:
    n = len(shared)
    noise = rng.standard_t(tails, size=(n, C)) if tails else rng.normal(size=(n, C))
    gap = gap_scale * rng.uniform(0.5, 1.5, size=n)
    raw = gap[:, None] * (effect + shared + sigma * noise)
    return EffectTable.from_pairs(
        [
            PairEffects(f"p{i}", NAMES, clean=float(g), corrupt=0.0, patched=r)
            for i, (r, g) in enumerate(zip(raw, gap))
        ]
    )


def _shift_p(a: EffectTable, b: EffectTable, rng, n_perm=1000) -> float:
    idx = np.arange(len(a.pair_ids))
    t = shift_test(normalised_effects(a, idx), normalised_effects(b, idx), NAMES, n_perm=n_perm,
                   rng=rng)  # fmt: skip
    return t.p_value["all"]


def _shared(rng, n):
    return 0.5 * rng.normal(size=(n, C))


# --- "shifted": the paired permutation test ---------------------------------------------------


@pytest.mark.parametrize("n, tails", [(8, None), (16, None), (16, 3)])
def test_shift_test_false_positive_rate_under_no_shift(n, tails):
    """Same profile, unequal noise and gap scales (ICL's gap is larger and its effects
    noisier): "shifted" at p < 0.05 in at most 6% of replications."""
    rng = np.random.default_rng(100 + n)
    hits = 0
    for _ in range(REPS_SHIFT_SIZE):
        e = _profile(rng)
        u = _shared(rng, n)
        a = _table(rng, e, u, sigma=0.7, tails=tails)
        b = _table(rng, e, u, sigma=1.4, gap_scale=3.0, tails=tails)
        hits += _shift_p(a, b, rng, n_perm=500) < NOMINAL
    assert hits / REPS_SHIFT_SIZE <= 0.06


def test_shift_test_power_under_a_real_shift():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(REPS):
        e = _profile(rng)
        u = _shared(rng, 16)
        a = _table(rng, e, u)
        b = _table(rng, e + 0.6 * np.linalg.norm(e) * _orthogonal(rng, e), u)
        hits += _shift_p(a, b, rng) < NOMINAL
    assert hits / REPS >= 0.8


def test_with_three_pairs_nothing_is_called_shifted():
    """Every one of the 2^3 swaps is enumerated (exact), and the observed labelling and its
    mirror image tie: p is at least 2/8 however far the settings are apart."""
    rng = np.random.default_rng(0)
    e = _profile(rng)
    u = _shared(rng, 3)
    a, b = _table(rng, e, u, sigma=0.01), _table(rng, -e, u, sigma=0.01)
    idx = np.arange(3)
    t = shift_test(normalised_effects(a, idx), normalised_effects(b, idx), NAMES, rng=rng)
    assert t.exact and t.n_perm == 8 and t.p_value["all"] >= 0.25
    assert t.observed["all"] > t.null_mean["all"]


def test_the_shift_record_carries_its_test():
    rng = np.random.default_rng(3)
    e = _profile(rng)
    u = _shared(rng, 12)
    a, b = _table(rng, e, u), _table(rng, e + 2 * _orthogonal(rng, e), u)
    d = circuit_shift(a, b, names=("base", "icl"), n_boot=20, n_splits=5, n_perm=200,
                      rng=np.random.default_rng(0)).to_dict()  # fmt: skip
    t = d["test"]
    assert t["statistic"] == "cosine_distance" and t["n_permutations"] == 200
    assert t["groups"]["all"]["statistic"] == d["cosine_distance"]["value"]
    assert 1 / 201 - 1e-6 <= t["p_value"] <= 1 and set(t["groups"]) == {"all", "attention", "mlp"}
    assert d["cosine_distance_debiased"] is not None
    again = circuit_shift(a, b, names=("base", "icl"), n_boot=20, n_splits=5, n_perm=200,
                          rng=np.random.default_rng(0)).to_dict()  # fmt: skip
    assert again == d  # seeded
    none = circuit_shift(a, b, names=("base", "icl"), n_boot=20, n_splits=0, n_perm=0,
                         rng=np.random.default_rng(0)).to_dict()  # fmt: skip
    assert none["test"] is None


# --- is ICL's shift larger than fine-tuning's? ------------------------------------------------


def _three(rng, n, s_icl, s_ft, sigma_icl=1.0, sigma_ft=1.0, tails=None):
    e = _profile(rng)
    u = _shared(rng, n)
    di = _orthogonal(rng, e)
    df = _orthogonal(rng, e, di)  # ICL and FT move in different directions
    scale = np.linalg.norm(e * KEEP)
    return (
        _table(rng, e, u, tails=tails),
        _table(rng, e + s_icl * scale * di, u, sigma=sigma_icl, gap_scale=2.0, tails=tails),
        _table(rng, e + s_ft * scale * df, u, sigma=sigma_ft, tails=tails),
    )


@pytest.mark.parametrize(
    "n, shift, sigma_icl, sigma_ft, tails",
    [
        (3, 0.8, 2.0, 0.5, None),  # the fewest pairs the jackknife takes
        (8, 0.8, 1.0, 1.0, None),  # equal shifts, equal noise
        (16, 0.8, 2.0, 0.5, None),  # equal shifts, ICL noisier
        (16, 0.0, 2.0, 0.5, None),  # no shift at all, ICL noisier: plain distances differ
        (16, 0.8, 2.0, 0.5, 3),  # heavy tails
    ],
)
def test_icl_vs_ft_comparison_size(n, shift, sigma_icl, sigma_ft, tails):
    rng = np.random.default_rng(n + int(10 * shift) + int(sigma_icl))
    hits = 0
    for _ in range(REPS):
        base, icl, ft = _three(rng, n, shift, shift, sigma_icl, sigma_ft, tails)
        p = compare_shifts(base, icl, ft).p_value
        hits += bool(np.isfinite(p) and p < NOMINAL)
    assert hits / REPS <= 0.06


def test_icl_vs_ft_comparison_power_and_direction():
    rng = np.random.default_rng(11)
    icl_more = ft_more = 0
    for _ in range(REPS):
        base, icl, ft = _three(rng, 16, 1.0, 0.3)
        c = compare_shifts(base, icl, ft)
        icl_more += c.p_value < NOMINAL and c.diff > 0
        ft_more += c.p_value < NOMINAL and c.diff < 0
    assert icl_more / REPS >= 0.8 and ft_more == 0


def test_debiased_distance_is_not_inflated_by_noise():
    """Two settings with the same profile: the plain cosine distance grows with the noise,
    the debiased one stays near 0 on average."""
    rng = np.random.default_rng(5)
    plain, debiased = [], []
    for _ in range(100):
        e, u = _profile(rng), _shared(rng, 16)
        a, b = _table(rng, e, u, sigma=2.0), _table(rng, e, u, sigma=2.0)
        idx = np.arange(16)
        ra, rb = normalised_effects(a, idx), normalised_effects(b, idx)
        plain.append(1 - ra.mean(0) @ rb.mean(0) / np.linalg.norm(ra.mean(0))
                     / np.linalg.norm(rb.mean(0)))  # fmt: skip
        debiased.append(debiased_cosine_distance(ra, rb))
    assert np.mean(plain) > 0.1 and abs(np.nanmean(debiased)) < 0.03


def test_comparison_refuses_too_few_pairs():
    rng = np.random.default_rng(0)
    base, icl, ft = _three(rng, 2, 1.0, 0.0)
    c = compare_shifts(base, icl, ft)
    assert not np.isfinite(c.p_value) and "at least 3" in c.reason
    assert c.to_dict()["p_value"] is None


# --- the gap guard --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 10])
def test_gap_guard_size_with_a_zero_gap(n):
    """A gap of mean 0: "identified" (the one-sided t test at 2.5%) in at most 3.5% of 2000
    replications (the percentile bootstrap it replaces: 13% at 3 pairs)."""
    rng = np.random.default_rng(n)
    rate = np.mean([gap_check(rng.normal(size=n)).identified for _ in range(2000)])
    assert rate <= 0.035


def test_gap_guard_identifies_a_clear_gap():
    rng = np.random.default_rng(1)
    rate = np.mean([gap_check(1.0 + 0.2 * rng.normal(size=3)).identified for _ in range(500)])
    assert rate >= 0.8


# --- Holm, and the decisions of one analysis --------------------------------------------------


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 (m = 3): 0.03, max(0.03, 0.04), max(0.04, 0.04)
    assert holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]


def test_decide_adjusts_the_analysis_tests_as_one_family():
    from iclft.analysis.pipeline import decide

    shifts = [
        {"status": "identified", "test": {"p_value": 0.01}},
        {"status": "identified", "test": {"p_value": 0.03}},
        {"status": "not identified", "test": None},
    ]
    comparison = {"a": "icl", "b": "ft", "p_value": 0.02, "diff": -0.3}
    decide(shifts, comparison)
    t0, t1 = shifts[0]["test"], shifts[1]["test"]
    assert t0["p_holm"] == pytest.approx(0.03) and t0["shifted"] is True
    assert t1["p_holm"] == pytest.approx(0.04) and t1["shifted"] is True  # max(0.04, 0.03)
    assert comparison["p_holm"] == pytest.approx(0.04) and comparison["larger"] == "ft"
    assert t0["holm_family"] == 3
    shifts = [{"status": "identified", "test": {"p_value": 0.04}}]
    comparison = {"a": "icl", "b": "ft", "p_value": 0.04, "diff": 0.3}
    decide(shifts, comparison)
    assert shifts[0]["test"]["shifted"] is False and comparison["larger"] is None
