"""Reference readers of SimAOU's h and SimAM's m, built on the capture functions one call at a
time (the similarity analysis reads both in one forward; tests compare it with these)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from iclft.analysis.capture import capture, capture_qk
from iclft.models.anatomy import Anatomy, Site


def attention_outputs(anatomy: Anatomy, position: int = -1, **forward_kwargs: Any) -> torch.Tensor:
    """``[layers, batch, d_model]``: every layer's attention output at ``position``."""
    sites = [Site(layer, "attn") for layer in range(anatomy.n_layers)]
    acts = capture(anatomy, sites, **forward_kwargs)
    return torch.stack([acts[s][:, position] for s in sites])


def attention_scores(
    anatomy: Anatomy,
    key_positions: Sequence[int] | slice = slice(None),
    query_position: int = -1,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """``[layers, batch, heads, n_key]``: pre-softmax scores from ``query_position`` (default
    the last) to ``key_positions`` (e.g. the query's own tokens) in every layer and head."""
    qk = capture_qk(anatomy, **forward_kwargs)
    return torch.stack(
        [qk[layer].scores([query_position], key_positions)[:, :, 0] for layer in sorted(qk)]
    )
