"""Layer-causal GD: layer l's parameters get gradient only from layer l's early-exit loss."""

from __future__ import annotations

import pytest
import torch

from iclft.finetune.layer_causal import freeze_readout, layer_causal_loss, layer_causal_losses
from iclft.finetune.methods import select_parameters
from iclft.tasks import get_task


class _Cfg:
    class lora:  # noqa: N801 - mimics the pydantic settings object
        rank, alpha, dropout, target_modules = 4, 8.0, 0.0, None


def _batch(tok):
    task = get_task("expression")
    texts = [task.render_demo(e) + "\n" for e in task.generate("clean", 3, 2)]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return enc.input_ids, enc.attention_mask, labels


def _layer_params(model, arch):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.transformer.h if arch == "gpt2" else base.model.layers
    return [[p for p in layer.parameters() if p.requires_grad] for layer in layers]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("selection", ["kv", "full", "lora"])
def test_each_layer_gets_gradient_only_from_its_own_exit(
    arch, selection, tiny_tokenizer, tiny_model_factory
):
    model = tiny_model_factory(arch, len(tiny_tokenizer), seed=1)
    model.eval()  # no dropout, so the separate forwards below compute the same function
    model = select_parameters(model, selection, _Cfg)
    freeze_readout(model)
    ids, mask, labels = _batch(tiny_tokenizer)
    per_layer = _layer_params(model, arch)
    assert all(per_layer), "every layer has trainable parameters"

    losses = layer_causal_losses(model, ids, mask, labels)
    assert len(losses) == len(per_layer)
    flat = [p for ps in per_layer for p in ps]
    separate = [torch.autograd.grad(loss, flat, allow_unused=True) for loss in losses]
    total = torch.autograd.grad(layer_causal_loss(model, ids, mask, labels), flat)

    offsets = [0]
    for ps in per_layer:
        offsets.append(offsets[-1] + len(ps))
    for m, grads in enumerate(separate):  # loss term m
        for layer in range(len(per_layer)):
            own = grads[offsets[layer] : offsets[layer + 1]]
            if layer == m:  # (LoRA's A gets zero gradient at init, as its B is zero)
                assert sum(float(g.abs().sum()) for g in own if g is not None) > 0
            else:  # never from another layer's exit
                assert all(g is None or torch.count_nonzero(g) == 0 for g in own)
    for layer in range(len(per_layer)):  # the total's gradient is the own term's gradient
        for i in range(offsets[layer], offsets[layer + 1]):
            torch.testing.assert_close(total[i], separate[layer][i], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_last_exit_is_the_ordinary_loss(arch, tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory(arch, len(tiny_tokenizer), seed=2)
    ids, mask, labels = _batch(tiny_tokenizer)
    with torch.no_grad():
        losses = layer_causal_losses(model, ids, mask, labels)
        ordinary = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(losses[-1], ordinary, rtol=1e-5, atol=1e-6)


def test_gpt2_kv_leaves_the_query_third_alone(tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory("gpt2", len(tiny_tokenizer), seed=5).train()
    model = select_parameters(model, "kv", _Cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".c_attn." in n for n in trainable)
    ids, mask, labels = _batch(tiny_tokenizer)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    w = model.transformer.h[0].attn.c_attn.weight
    n = model.config.n_embd
    assert torch.count_nonzero(w.grad[:, :n]) == 0
    assert torch.count_nonzero(w.grad[:, n:]) > 0
