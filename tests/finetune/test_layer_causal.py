"""Layer-causal GD: layer l's parameters get gradient only from layer l's early-exit loss, for
each parameter selection (every family, with full selection: tests/models/test_families.py)."""

from __future__ import annotations

import pytest
import torch

from iclft.finetune.config import TrainingSettings
from iclft.finetune.layer_causal import freeze_readout, layer_causal_loss, layer_causal_losses
from iclft.finetune.methods import get_method
from iclft.models.anatomy import anatomy
from iclft.tasks import get_task

_SETTINGS = TrainingSettings(lora_rank=4, lora_alpha=8.0)


def _batch(tok):
    task = get_task("expression")
    texts = [task.render_demo(e) + "\n" for e in task.generate("clean", 3, 2)]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return enc.input_ids, enc.attention_mask, labels


def _layer_params(model):
    return [[p for p in block.parameters() if p.requires_grad] for block in anatomy(model).blocks]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("selection", ["kv", "full", "lora"])
def test_each_layer_gets_gradient_only_from_its_own_exit(
    arch, selection, tiny_tokenizer, tiny_model_factory
):
    model = tiny_model_factory(arch, len(tiny_tokenizer), seed=1)
    model.eval()  # no dropout, so the separate forwards below compute the same function
    model = get_method(selection).select(model, _SETTINGS)
    freeze_readout(model)
    ids, mask, labels = _batch(tiny_tokenizer)
    per_layer = _layer_params(model)
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
