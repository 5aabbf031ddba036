"""Gradient descent on the k demonstrations, in memory (the ICL-vs-GD protocol).

Dai et al. and Deutch et al. compare ICL with the model after plain SGD on the demonstrations:
batch 1, one epoch in prompt order, each demonstration one training sequence with the loss on
all its tokens, only K and V projections trained. The analysis needs this for many (task, lr,
vanilla/layer-causal) combinations and only the updated weights, so it runs a direct loop rather
than the Trainer (which would write a run directory each time). ``iclft finetune --data
demonstrations`` is the same procedure through the Trainer; a test checks both give the same
weights.

The update is always computed in fp32 (fp32 master weights), whatever dtype the model is
evaluated in: SGD applied directly to bf16 weights rounds most small steps away (on a tiny Llama
at lr 1e-3, 18.5% of K/V entries moved and the update was 55% off in norm). The caller casts the
fp32 result to its evaluation dtype (see :func:`cast_like`).
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
from torch import nn

from iclft.finetune.config import TrainingSettings
from iclft.finetune.data import TokenizedTexts, demonstration_texts
from iclft.finetune.methods import LayerCausal, get_method


def sgd_on_demonstrations(
    model: nn.Module,
    tokenizer,
    task: str,
    k: int,
    seed: int,
    lr: float,
    *,
    layer_causal: bool = False,
    params: str = "kv",
    master: bool = False,
    avoid: Collection[str] = (),
) -> nn.Module:
    """A copy of ``model`` after one epoch of batch-1 SGD over the k demonstrations of the
    shared k-shot prompt of (task, seed) (whose pool skips the questions in ``avoid``), loss on
    all tokens, no gradient clipping; ``model`` is left unchanged. The SGD runs on an fp32
    copy; it is returned in fp32 if ``master``, else cast back to ``model``'s dtype."""
    texts = demonstration_texts(task, k, seed, avoid)
    rows = TokenizedTexts(texts, tokenizer, loss_on="full", max_length=10_000).rows
    new = copy.deepcopy(model).float()  # fp32 master weights whatever the evaluation dtype
    new.eval()  # no dropout: the update is a deterministic function of the demonstrations
    method = get_method(LayerCausal.name if layer_causal else params, params)
    new = method.select(new, TrainingSettings())  # LoRA (if asked): the default settings
    opt = torch.optim.SGD([p for p in new.parameters() if p.requires_grad], lr=lr)
    device = next(new.parameters()).device
    for r in rows:
        ids = torch.tensor([r["input_ids"]], device=device)
        labels = torch.tensor([r["labels"]], device=device)
        inputs = {"input_ids": ids, "labels": labels}
        loss = method.loss(new, inputs)
        if loss is None:
            loss = new(**inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in new.parameters():
        p.requires_grad_(False)
    return new if master else cast_like(new, model)


def cast_like(new: nn.Module, model: nn.Module) -> nn.Module:
    """``new`` (in place) in ``model``'s floating dtype."""
    dtype = next(model.parameters()).dtype
    return new if next(new.parameters()).dtype == dtype else new.to(dtype)
