from __future__ import annotations

import numpy as np
import pytest

from iclft.analysis.circuits import (
    EffectTable,
    circuit,
    circuit_shift,
    cosine_distance,
    jaccard_distance,
)
from iclft.analysis.patching import PairEffects
from iclft.errors import UserError

NAMES = ("L0.H0", "L0.H1", "L0.MLP", "L0.RESID", "L1.H0", "L1.H1", "L1.MLP", "L1.RESID")


def _table(raw: np.ndarray, gap: np.ndarray) -> EffectTable:
    pairs = [
        PairEffects(f"p{i}", NAMES, clean=float(g), corrupt=0.0, patched=r)
        for i, (r, g) in enumerate(zip(raw, gap))
    ]
    return EffectTable.from_pairs(pairs)


def test_effects_are_a_ratio_of_means():
    raw = np.array([[1.0] * 8, [3.0] * 8])
    t = _table(raw, np.array([2.0, 6.0]))
    np.testing.assert_allclose(t.effects(), 0.5)
    np.testing.assert_allclose(t.effects(np.array([0, 0])), 0.5)


def test_circuit_top_k_and_share_skip_residual_streams():
    e = np.array([0.1, -0.6, 0.3, 5.0, 0.0, 0.2, -0.05, 9.0])
    assert circuit(e, NAMES, top_k=2) == ["L0.H1", "L0.MLP"]
    # |e| of heads and MLPs: .6 .3 .2 .1 .05 0 (total 1.25); 70% needs .6 + .3
    assert circuit(e, NAMES, share=0.7) == ["L0.H1", "L0.MLP"]
    assert circuit(e, NAMES, share=1.0)[-1] == "L1.MLP"
    with pytest.raises(UserError):
        circuit(e, NAMES, share=1.5)


def test_distances():
    assert jaccard_distance(["a", "b"], ["b", "c"]) == pytest.approx(1 - 1 / 3)
    assert jaccard_distance([], []) == 0.0
    x = np.array([1.0, 0.0])
    assert cosine_distance(x, x) == pytest.approx(0.0)
    assert cosine_distance(x, np.array([0.0, 2.0])) == pytest.approx(1.0)
    assert cosine_distance(x, -x) == pytest.approx(2.0)
    assert np.isnan(cosine_distance(x, np.zeros(2)))


def test_shift_of_a_setting_with_itself_is_zero_and_moves_when_effects_move():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(12, 8)) + np.array([2, 0, 1, 0, 0, 0, 0, 0])
    gap = np.ones(12)
    a = _table(raw, gap)
    same = circuit_shift(a, a, top_k=2, n_boot=50, rng=np.random.default_rng(1))
    assert same.jaccard.value == 0 and same.cosine.value == pytest.approx(0, abs=1e-12)
    assert same.jaccard.ci_high == 0
    moved = _table(raw[:, ::-1].copy(), gap)  # effects land on other components
    s1 = circuit_shift(a, moved, top_k=2, n_boot=50, rng=np.random.default_rng(1))
    s2 = circuit_shift(a, moved, top_k=2, n_boot=50, rng=np.random.default_rng(1))
    assert s1.jaccard.value > 0.5 and s1.cosine.value > 0.5
    assert s1.jaccard.ci_low <= s1.jaccard.value <= s1.jaccard.ci_high
    assert s1.to_dict() == s2.to_dict()  # seeded bootstrap
    assert len(s1.per_layer) == 2
    ea, eb = a.effects(), moved.effects()
    for layer, iv in enumerate(s1.per_layer):  # heads and MLP of each layer
        sel = [i for i, n in enumerate(NAMES) if n.startswith(f"L{layer}.") and "RESID" not in n]
        assert iv.value == pytest.approx(cosine_distance(ea[sel], eb[sel]), abs=1e-12)
    d = s1.to_dict()
    assert set(d["attention"]) == set(d["mlp"]) == {"jaccard_distance", "cosine_distance"}


# --- the gap guard ----------------------------------------------------------------------------


def test_gap_guard_marks_a_gap_indistinguishable_from_zero():
    from iclft.analysis.circuits import gap_check

    clear = gap_check(np.array([1.0, 1.2, 0.9, 1.1]))
    assert clear.identified and clear.reason is None
    assert 0 < clear.ci_low <= clear.mean <= clear.ci_high
    # the t interval, by hand: mean 1.05, sd 0.1291, t(0.975, 3) = 3.1824
    assert clear.ci_low == pytest.approx(1.05 - 3.182446 * 0.129099 / 2, abs=1e-5)
    assert clear.to_dict()["p_value"] < 0.025 and "t test" in clear.to_dict()["test"]
    # a gap that straddles 0 over pairs: not identified, with the interval in the reason
    noisy = gap_check(np.array([1.0, -1.2, 0.4, -0.3, 0.2]))
    assert not noisy.identified and noisy.ci_low < 0 < noisy.ci_high
    assert "not above 0" in noisy.reason and noisy.p_value > 0.025
    assert not gap_check(np.array([-1.0, -2.0, -1.5])).identified
    one = gap_check(np.array([3.0]))
    assert not one.identified and "fewer than 2 pairs" in one.reason
    assert gap_check(np.array([2.0, 2.0, 2.0])).identified  # no spread: the interval is a point


def test_a_shift_from_an_unidentified_setting_is_not_reported():
    rng = np.random.default_rng(0)
    a = _table(rng.normal(size=(6, 8)) + 1, np.ones(6))
    b = _table(rng.normal(size=(6, 8)) + 1, np.ones(6))
    ok = circuit_shift(a, b, names=("base", "icl"), top_k=2, n_boot=20, rng=rng).to_dict()
    assert ok["status"] == "identified" and ok["jaccard_distance"]["value"] is not None
    s = circuit_shift(
        a, b, names=("base", "icl"), top_k=2, n_boot=20, not_identified=["icl"], rng=rng
    ).to_dict()
    assert s["status"] == "not identified" and s["not_identified"] == ["icl"]
    assert s["jaccard_distance"] is None and s["cosine_distance"] is None
    assert s["noise_floor"] is None
    assert s["unguarded"]["jaccard_distance"]["value"] is not None  # kept for diagnosis


# --- the split-half noise floor ----------------------------------------------------------------


def test_split_halves_are_disjoint_and_equal():
    from iclft.analysis.circuits import split_halves

    for n in (2, 5, 8):
        for h1, h2 in split_halves(n, 10, np.random.default_rng(0)):
            assert len(h1) == len(h2) == n // 2 and not set(h1) & set(h2)
            assert set(h1) | set(h2) <= set(range(n))
    assert split_halves(1, 10, np.random.default_rng(0)) == []


def test_split_half_floor_is_zero_on_the_same_pairs_and_positive_on_noisy_halves():
    from iclft.analysis.circuits import noise_floor

    rng = np.random.default_rng(0)
    signal = np.array([2.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.2, 0.0])
    raw = signal + rng.normal(scale=1.0, size=(6, 8))
    # the same pairs used twice: halves [0..5] and [6..11] hold identical rows
    twice = _table(np.concatenate([raw, raw]), np.ones(12))
    idx = np.arange(12)
    same = noise_floor(twice, twice, idx, idx, [(idx[:6], idx[6:])], top_k=2, share=None)
    for iv in (*same.floor, *same.floor_a, *same.floor_b):
        assert iv.value == pytest.approx(0.0, abs=1e-12)
    # disjoint halves of noisy pairs: the distance that sampling noise alone makes
    noisy = _table(signal + rng.normal(scale=1.0, size=(20, 8)), np.ones(20))
    shift = circuit_shift(noisy, noisy, top_k=2, n_boot=0, n_splits=30, rng=rng)
    assert shift.jaccard.value == 0 and shift.cosine.value == pytest.approx(0, abs=1e-12)
    f = shift.floor
    assert f.n_splits == 30 and f.half_size == 10
    assert f.floor[1].value > 0.01  # cosine distance between halves
    assert f.floor[0].ci_high > 0  # some splits pick different top-2 sets
    # a setting with itself: the like-for-like half shift is the floor itself
    assert f.half_shift[1].value == pytest.approx(f.floor[1].value)
    d = shift.to_dict()["noise_floor"]
    assert d["all"]["cosine_distance"]["shift_over_floor"] == pytest.approx(0, abs=1e-6)
    assert set(d) >= {"all", "attention", "mlp", "n_splits", "half_size", "method"}
    # no noise: every half gives the same effects, so the floor is 0
    flat = _table(np.tile(signal, (8, 1)), np.ones(8))
    f0 = circuit_shift(flat, flat, top_k=2, n_boot=0, n_splits=10, rng=rng).floor
    assert all(iv.value == pytest.approx(0, abs=1e-12) for iv in f0.floor)


def test_a_real_shift_stands_above_its_floor():
    rng = np.random.default_rng(1)
    sa = np.array([3.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    sb = np.array([0.0, 0.0, 0.0, 0.0, 3.0, 2.0, 0.0, 0.0])
    a = _table(sa + rng.normal(scale=0.3, size=(10, 8)), np.ones(10))
    b = _table(sb + rng.normal(scale=0.3, size=(10, 8)), np.ones(10))
    d = circuit_shift(a, b, top_k=2, n_boot=20, n_splits=20, rng=rng).to_dict()
    j = d["noise_floor"]["all"]["jaccard_distance"]
    assert d["jaccard_distance"]["value"] == 1.0 and j["floor"]["value"] < 0.5
    assert j["half_shift"]["value"] == 1.0
    if j["floor"]["value"] == 0:  # the halves always agree: a ratio to 0 is left undefined
        assert j["shift_over_floor"] is None
    c = d["noise_floor"]["all"]["cosine_distance"]
    assert 0 < c["floor"]["value"] < 0.2 and c["half_shift_over_floor"] > 5
    assert c["shift_over_floor"] == pytest.approx(
        d["cosine_distance"]["value"] / c["floor"]["value"], rel=1e-3
    )


# --- attribution checked against exact patching ------------------------------------------------


def test_agreement_of_attribution_with_exact():
    from iclft.analysis.circuits import agreement

    rng = np.random.default_rng(0)
    raw = np.array([0.1, -0.6, 0.3, 5.0, 0.0, 0.2, -0.05, 9.0]) + rng.normal(0, 0.01, (5, 8))
    att = _table(raw, np.ones(5))
    top = [1, 2, 5, 0]  # attribution's top 4 heads/MLPs: L0.H1, L0.MLP, L1.H1, L0.H0
    sub = (tuple(NAMES[i] for i in top), raw[:, top])

    def exact_table(values: np.ndarray) -> EffectTable:
        pairs = [
            PairEffects(f"p{i}", sub[0], clean=1.0, corrupt=0.0, patched=v)
            for i, v in enumerate(values)
        ]
        return EffectTable.from_pairs(pairs)

    same = agreement(att, exact_table(sub[1]), top_k=2, n_boot=50, rng=rng)
    assert same.components == ("L0.H1", "L0.MLP", "L1.H1", "L0.H0")
    assert same.spearman.value == pytest.approx(1.0) and same.overlap == 2
    assert same.scale == pytest.approx(1.0) and same.n_eligible == 6
    # exact finds the two largest at half attribution's size and the order of the rest reversed
    halved = sub[1] * np.array([0.5, 0.5, 1.0, 1.0])
    h = agreement(att, exact_table(halved), top_k=2, n_boot=50, rng=rng)
    assert h.scale == pytest.approx(0.5, rel=0.05)
    assert h.overlap == 1  # L0.MLP (exact .15) drops below L1.H1 (.2)
    assert h.spearman.value < 1
    d = h.to_dict()
    assert d["top_k_overlap"] == 1 and d["n_remeasured"] == 4
    assert d["spearman"]["ci_low"] <= d["spearman"]["value"] <= d["spearman"]["ci_high"]
