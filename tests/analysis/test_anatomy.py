from __future__ import annotations

import types

import pytest
import torch

from iclft.analysis.capture import capture
from iclft.errors import UserError
from iclft.models.anatomy import Component, Site, anatomy, parse_component

ARCHS = ("llama", "qwen2", "gemma3", "gpt2")


def test_component_names_round_trip():
    for name in ("L0.H3", "L12.MLP", "L2.RESID", "L5.ATTN"):
        assert parse_component(name).name == name
    assert parse_component("L3.H5") == Component(3, "head", 5)
    assert parse_component("L3.H5").site == Site(3, "heads")
    with pytest.raises(UserError, match="bad component name"):
        parse_component("layer3.head5")


def test_unsupported_architecture_names_the_supported_ones():
    fake = torch.nn.Linear(2, 2)
    fake.config = types.SimpleNamespace(model_type="mamba")
    with pytest.raises(UserError, match="'mamba'.*supported: llama, mistral, qwen2"):
        anatomy(fake)


@pytest.mark.parametrize("arch", ARCHS)
def test_components_and_shapes(arch, tiny_models, tiny_tokenizer, hooks_left):
    an = anatomy(tiny_models[arch])
    assert (an.n_layers, an.n_heads, an.head_dim) == (2, 4, 8)
    names = [c.name for c in an.components()]
    assert names[:6] == ["L0.H0", "L0.H1", "L0.H2", "L0.H3", "L0.MLP", "L0.RESID"]
    assert len(names) == 2 * (4 + 2)
    ids = torch.tensor([tiny_tokenizer("(1+2)+(3-3)*(4+5)=")["input_ids"]])
    sites = [Site(layer, k) for layer in range(2) for k in ("heads", "attn", "mlp", "resid")]
    acts = capture(an, sites, input_ids=ids)
    T = ids.shape[1]
    for s in sites:
        assert acts[s].shape == (1, T, 32), s
    # the heads site is the output projection's input: projecting it gives the ATTN site
    for layer in range(2):
        proj = an.out_proj(layer)(acts[Site(layer, "heads")])
        torch.testing.assert_close(proj, acts[Site(layer, "attn")])
    if arch != "gemma3":  # Gemma normalises block outputs before the residual add
        emb = acts[Site(0, "resid")] - acts[Site(0, "attn")] - acts[Site(0, "mlp")]
        step = acts[Site(1, "resid")] - acts[Site(1, "attn")] - acts[Site(1, "mlp")]
        torch.testing.assert_close(step, acts[Site(0, "resid")])
        assert emb.abs().sum() > 0
    assert hooks_left(an.model) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_projections_make_keys_and_values(arch, tiny_models):
    an = anatomy(tiny_models[arch])
    kv = an.kv_projections(1)
    x = torch.randn(1, 3, 32)
    k = kv.k(x)[..., kv.k_cols] if kv.k_cols is not None else kv.k(x)
    v = kv.v(x)[..., kv.v_cols] if kv.v_cols is not None else kv.v(x)
    assert k.shape[-1] == v.shape[-1] == an.n_kv_heads * an.head_dim


def test_hooks_and_replay_removed_when_forward_raises(tiny_models, tiny_tokenizer, hooks_left):
    an = anatomy(tiny_models["llama"])
    ids = torch.tensor([tiny_tokenizer("True or False")["input_ids"]])

    def boom(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with an.hooks({Site(1, "mlp"): boom, Site(0, "heads"): lambda x: None}):
            with an.replay({0: torch.zeros(1, ids.shape[1], 32)}):
                assert "forward" in vars(an.block(0))
                an.model(input_ids=ids)
    assert hooks_left(an.model) == 0
    assert "forward" not in vars(an.block(0))
    an.model(input_ids=ids)  # still works


def test_edit_replaces_the_activation(tiny_models, tiny_tokenizer):
    an = anatomy(tiny_models["gpt2"])
    ids = torch.tensor([tiny_tokenizer("True or False")["input_ids"]])
    base = an.model(input_ids=ids).logits
    with an.hooks({Site(1, "resid"): lambda x: torch.zeros_like(x)}):
        zeroed = an.model(input_ids=ids).logits
    # a zero residual stream gives the same logits at every position
    torch.testing.assert_close(zeroed[0, 0], zeroed[0, -1])
    assert not torch.allclose(base[0, 0], base[0, -1])
