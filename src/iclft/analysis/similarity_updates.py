"""The updates the ICL-vs-gradient-descent analysis compares with ICL, beside gradient descent
itself (:func:`iclft.finetune.gd.sgd_on_demonstrations`), and their controls: a norm-matched
random update, the size of an update per block, a randomly initialised model of the same
architecture, and the seeds of each random stream."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------------------------
# Updates


@torch.no_grad()
def random_update(base: nn.Module, updated: nn.Module, seed: int) -> nn.Module:
    """A copy of ``base`` moved like ``updated`` but in a random direction: per parameter tensor,
    θ + ‖Δθ‖ · ε/‖ε‖ with Δθ = θ_updated − θ and ε ~ N(0, I) on the entries Δθ moved."""
    gen = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(base)
    moved = dict(updated.named_parameters())
    for name, p in new.named_parameters():
        delta = moved[name].detach().float() - p.float()
        support = delta != 0
        if not support.any():
            continue
        eps = torch.randn(p.shape, generator=gen).to(p.device) * support
        p.copy_(p.float() + delta.float().norm() * eps / eps.norm())
    for p in new.parameters():
        p.requires_grad_(False)
    return new


@torch.no_grad()
def update_norms(base_blocks: Sequence[nn.Module], new_blocks: Sequence[nn.Module]) -> list[float]:
    """‖Δθ‖ of each decoder layer (all its parameters together)."""
    return [
        math.sqrt(
            sum(
                float((q - p).double().pow(2).sum()) for p, q in zip(a.parameters(), b.parameters())
            )
        )
        for a, b in zip(base_blocks, new_blocks)
    ]


def seed_of(*keys: int) -> int:
    """A 63-bit seed derived from ``keys`` (numpy's SeedSequence), one per random stream."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def untrained_model(model: nn.Module, seed: int) -> nn.Module:
    """A randomly initialised model of ``model``'s architecture (its config's own
    initialisation, from ``seed``), on ``model``'s device and in its dtype, in eval mode."""
    from transformers import AutoModelForCausalLM

    p = next(model.parameters())
    cfg = copy.deepcopy(model.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    new = new.to(p.device, p.dtype).eval()
    for q in new.parameters():
        q.requires_grad_(False)
    return new
