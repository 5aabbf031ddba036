from __future__ import annotations

import numpy as np
import pytest
import torch

from iclft.analysis.patching import (
    TokenPair,
    attribution_patching,
    exact_patching,
    patched_metric,
)
from iclft.models.anatomy import Component, anatomy

ARCHS = ("llama", "qwen2", "gemma3", "gpt2")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", ["parity", "code"])  # one-row and two-row (multi-token) pairs
def test_identities(arch, task, tiny_models, token_pairs):
    an = anatomy(tiny_models[arch])
    pair = token_pairs[task][0]
    assert pair.n_rows == (2 if task == "code" else 1)
    last = an.n_layers - 1
    clean, corrupt, nothing = patched_metric(an, pair, [])
    assert clean != corrupt
    assert nothing == pytest.approx(corrupt, abs=1e-6)
    for layer in (0, last):  # every position of a residual stream carries the whole run
        _, _, full = patched_metric(an, pair, [Component(layer, "resid")], positions="all")
        assert full == pytest.approx(clean, abs=1e-5)
    # the shared prefix is identical in both prompts: the query positions suffice
    _, _, query = patched_metric(an, pair, [Component(last, "resid")], positions="query")
    assert query == pytest.approx(clean, abs=1e-5)


@pytest.mark.parametrize(
    ("arch", "task", "positions"),
    [(a, t, "query") for a in ARCHS for t in ("parity", "code")]
    + [("llama", "code", "last"), ("gemma3", "parity", "last")],
)
def test_batched_equals_naive_loop(arch, task, positions, tiny_models, token_pairs, hooks_left):
    an = anatomy(tiny_models[arch])
    pair = token_pairs[task][1]
    naive = exact_patching(an, pair, positions=positions, batch_size=1, reuse=False)
    batched = exact_patching(an, pair, positions=positions, batch_size=5, reuse=True)
    assert naive.components == batched.components
    np.testing.assert_allclose(batched.patched, naive.patched, atol=2e-5)
    assert (naive.clean, naive.corrupt) == pytest.approx((batched.clean, batched.corrupt), abs=1e-5)
    # RESID of the last layer at the query positions restores the clean run (effect 1)
    i = naive.components.index(f"L{an.n_layers - 1}.RESID")
    if positions == "query":
        assert naive.normalised[i] == pytest.approx(1.0, abs=1e-3)
        assert np.abs(naive.raw).max() > 1e-4  # and patching does something
    assert hooks_left(an.model) == 0


def _linear_model(factory, arch, vocab):
    """Final norm removed and the last MLP zeroed: the metric (a difference of two logits at
    one position) is then linear in every last-layer activation."""
    model = factory(arch, vocab, seed=3, initializer_range=0.3)
    with torch.no_grad():
        if arch == "gpt2":
            model.transformer.ln_f = torch.nn.Identity()
            mlp = model.transformer.h[-1].mlp.c_proj
            mlp.weight.zero_()
            mlp.bias.zero_()
        else:
            model.model.norm = torch.nn.Identity()
            model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_attribution_equals_exact_when_linear(
    arch, tiny_model_factory, tiny_tokenizer, token_pairs
):
    an = anatomy(_linear_model(tiny_model_factory, arch, len(tiny_tokenizer)))
    pair = token_pairs["parity"][0]
    assert pair.n_rows == 1
    comps = an.components(("head", "attn", "mlp", "resid"))
    exact = exact_patching(an, pair, comps)
    attr = attribution_patching(an, pair, comps)
    assert (attr.clean, attr.corrupt) == pytest.approx((exact.clean, exact.corrupt), abs=1e-5)
    last = [i for i, c in enumerate(comps) if c.layer == an.n_layers - 1]
    np.testing.assert_allclose(attr.patched[last], exact.patched[last], rtol=1e-4, atol=1e-4)
    assert np.abs(exact.raw[last]).max() > 1e-2
    # below the last layer the metric is not linear, and the estimate is only approximate
    first = [i for i, c in enumerate(comps) if c.layer == 0]
    assert np.abs(attr.patched[first] - exact.patched[first]).max() > 1e-7


@pytest.mark.parametrize("arch", ARCHS)
def test_attribution_tracks_exact(arch, tiny_models, token_pairs, hooks_left):
    an = anatomy(tiny_models[arch])
    pair = token_pairs["code"][0]
    exact = exact_patching(an, pair)
    attr = attribution_patching(an, pair)
    assert (attr.clean, attr.corrupt) == pytest.approx((exact.clean, exact.corrupt), abs=1e-5)
    assert np.corrcoef(attr.raw, exact.raw)[0, 1] > 0.5
    assert hooks_left(an.model) == 0


def test_rows_and_metric():
    pair = TokenPair("p", (1, 2, 3), (1, 2, 4), ((5, 6), (7,)), query_start=1, pad_id=0)
    assert pair.n_rows == 2 and pair.length == 5 and pair.logits_needed == 3
    assert pair.rows("corrupt").tolist() == [[1, 2, 4, 5, 6], [1, 2, 4, 7, 0]]
    assert pair.positions("query") == [1, 2, 3, 4]
    assert pair.positions("last") == [2]
    logits = torch.zeros(2, 3, 8)
    logits[0, 0, 5] = 2.0  # row A, position 2 predicts 5
    logits[0, 1, 6] = 1.0  # row A, position 3 predicts 6
    logits[1, 0, 7] = 3.0  # row B, position 2 predicts 7
    lsm = torch.log_softmax(logits, -1)
    want = lsm[0, 0, 5] + lsm[0, 1, 6] - lsm[1, 0, 7]
    assert float(pair.metric(logits)[0]) == pytest.approx(float(want))


# In float64: these random models' clean-corrupt gaps are tiny (2e-4 on gpt2-code), so in float32
# one rounding step of the metric (about 1e-6 on log-probabilities near 8) is 0.5% of the gap,
# and a batched run that rounds differently from the one-at-a-time run misses the identities
# below by that much; in float64 they hold to 1e-9.
@pytest.mark.parametrize(("arch", "task"), [("llama", "parity"), ("gpt2", "code")])
def test_per_position_patching(arch, task, tiny_models, token_pairs, hooks_left):
    import copy

    from iclft.analysis.patching import exact_patching_per_position

    an = anatomy(copy.deepcopy(tiny_models[arch]).double())
    pair = token_pairs[task][1]
    last_layer = an.n_layers - 1
    comps = [
        Component(0, "head", 1),
        Component(0, "mlp"),
        Component(0, "resid"),
        Component(last_layer, "resid"),
    ]
    naive = exact_patching_per_position(an, pair, comps, batch_size=1, reuse=False)
    batched = exact_patching_per_position(an, pair, comps, batch_size=7, reuse=True)
    np.testing.assert_allclose(batched.patched, naive.patched, atol=1e-9)
    assert batched.positions[0] == pair.first_diff > pair.query_start - 1
    assert (
        batched.positions[-1] == pair.length - 1
        and batched.offsets[-1] == pair.length - pair.prompt_len
    )
    assert batched.patched.shape == (len(comps), len(batched.positions))
    last = batched.components.index(f"L{an.n_layers - 1}.RESID")
    effect = batched.raw[last] / batched.gap
    if pair.n_rows == 1:  # the metric reads the last prompt position only: it alone restores it
        assert effect[batched.offsets.index(0)] == pytest.approx(1.0, abs=1e-9)
        assert np.abs(np.delete(effect, batched.offsets.index(0))).max() < 1e-9
    else:  # each read position carries its share; together they make up the whole gap
        assert effect.sum() == pytest.approx(1.0, abs=1e-9)
    # a whole-query patch of the last residual stream is exactly the clean run; per position
    # the first layer's residual stream spreads its effect over the positions
    first = batched.components.index("L0.RESID")
    assert np.abs(batched.raw[first]).max() > 1e-4
    assert hooks_left(an.model) == 0
