"""Layer-causal gradient descent (docs/science.md; after Deutch et al.).

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

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.loss.loss_utils import ForCausalLMLoss

from iclft.models.anatomy import anatomy


def freeze_readout(model: nn.Module) -> None:
    """The final norm and unembedding are frozen in layer-causal GD (tied embeddings too)."""
    an = anatomy(model)
    for p in [*an.final_norm().parameters(), *an.unembedding().parameters()]:
        p.requires_grad_(False)


def layer_causal_losses(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> list[torch.Tensor]:
    """The early-exit loss of every layer, [CE(W_U · norm(h_l), y) for l = 1..L]."""
    an = anatomy(model)
    vocab = an.unembedding().out_features
    hidden: list[torch.Tensor] = []
    with an.detached_blocks(hidden):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    # only positions that predict a labelled token need logits
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    keep = shift != -100
    targets = shift[keep]

    def exit_loss(h: torch.Tensor) -> torch.Tensor:
        logits = an.readout(h)
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
