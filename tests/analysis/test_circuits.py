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
    d = s1.to_dict()
    assert set(d["attention"]) == set(d["mlp"]) == {"jaccard_distance", "cosine_distance"}
