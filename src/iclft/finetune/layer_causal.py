"""Layer-causal gradient descent (DESIGN.md; after Deutch et al.).

One forward pass over a training sequence. Before decoder layer l its incoming hidden state is
detached, h_{l-1} -> sg(h_{l-1}); after the layer, its output goes through the model's own
(frozen) final norm and unembedding to give early-exit logits. The loss is

    L = sum_l CE(W_U · norm(h_l), y)

Because of the detaches, layer l's parameters receive gradient only from their own term
CE(W_U · norm(h_l), y), never from layers above, just as ICL's change to layer l can depend
only on the layers below it. Each early-exit loss is wrapped in activation checkpointing, so the
L vocabulary-sized logit tensors are never held at once; cost: one forward, L extra unembedding
projections (twice: forward and recomputation), and a backward through one block per term.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.loss.loss_utils import ForCausalLMLoss

from iclft.errors import UserError

SUPPORTED = "llama, qwen2, gemma3, mistral and gpt2-style models"


def _base(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    get = getattr(model, "get_base_model", None)  # peft
    return get() if callable(get) else model


def decoder_parts(model: nn.Module) -> tuple[nn.ModuleList, nn.Module, nn.Module, float | None]:
    """(decoder layers, final norm, unembedding, final logit soft-cap) of a causal LM."""
    m = _base(model)
    inner = getattr(m, "model", None)
    if inner is not None and hasattr(inner, "layers") and hasattr(inner, "norm"):
        cfg = getattr(m.config, "text_config", None) or m.config
        return inner.layers, inner.norm, m.lm_head, getattr(cfg, "final_logit_softcapping", None)
    tr = getattr(m, "transformer", None)
    if tr is not None and hasattr(tr, "h") and hasattr(tr, "ln_f"):
        return tr.h, tr.ln_f, m.lm_head, None
    raise UserError(f"layer-causal training supports {SUPPORTED}; got {type(m).__name__}")


def freeze_readout(model: nn.Module) -> None:
    """The final norm and unembedding are frozen in layer-causal GD (tied embeddings too)."""
    _, norm, head, _ = decoder_parts(model)
    for p in [*norm.parameters(), *head.parameters()]:
        p.requires_grad_(False)


@contextlib.contextmanager
def _detached_layers(layers: nn.ModuleList, outputs: list[torch.Tensor]) -> Iterator[None]:
    """Detach each layer's incoming hidden state; collect each layer's output hidden state."""

    def pre(_mod, args, kwargs):
        if args:
            args = (args[0].detach(), *args[1:])
        else:
            kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}
        return args, kwargs

    def post(_mod, _args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = []
    try:
        for layer in layers:
            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


def layer_causal_losses(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> list[torch.Tensor]:
    """The early-exit loss of every layer, [CE(W_U · norm(h_l), y) for l = 1..L]."""
    layers, norm, head, softcap = decoder_parts(model)
    vocab = head.out_features
    hidden: list[torch.Tensor] = []
    with _detached_layers(layers, hidden):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    # only positions that predict a labelled token need logits
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    keep = shift != -100
    targets = shift[keep]

    def exit_loss(h: torch.Tensor) -> torch.Tensor:
        logits = head(norm(h))
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return ForCausalLMLoss(
            logits, None, vocab, num_items_in_batch=num_items_in_batch, shift_labels=targets
        )

    losses = []
    for h in hidden:
        sel = h[keep]
        if sel.requires_grad:
            losses.append(checkpoint(exit_loss, sel, use_reentrant=False))
        else:
            losses.append(exit_loss(sel))
    return losses


def layer_causal_loss(model, input_ids, attention_mask, labels, num_items_in_batch=None):
    """L = sum over layers of the early-exit losses."""
    return torch.stack(
        layer_causal_losses(model, input_ids, attention_mask, labels, num_items_in_batch)
    ).sum()
