"""Reading activations out of a forward pass, by site name.

* :func:`capture` returns the activations of any sites (``L3.HEADS``, ``L3.ATTN``, ...); the
  ``ATTN`` sites at the last position are the ``h`` of SimAOU.
* :func:`capture_qk` returns each layer's queries and keys as the attention kernel sees them;
  :meth:`QK.scores` gives each head's *pre-softmax* scores: the ``m`` of SimAM.

How the scores are obtained: fused attention kernels (sdpa) never materialise the scores, so we
recompute them from the queries and keys the model itself made. Hooks (the anatomy's
:meth:`~iclft.models.anatomy.Anatomy.qk_hooks`) read q and k where the family finishes them
before its rotary embedding (its query/key projections, its q/k norms, or the q and k features
of a fused q|k|v projection), a pre-hook on the attention module reads the ``(cos, sin)``
rotary tables the model passed in, and the family's own rotation is applied. Then

    score[h, i, j] = (q_i^h . k_j^{g(h)}) * scaling        (softcapped when the model softcaps)

with ``g(h) = h // (n_heads / n_kv_heads)`` (grouped-query attention) and ``scaling`` the
attention module's own (``head_dim**-0.5``, Gemma: ``query_pre_attn_scalar**-0.5``, GPT-Neo:
1, it does not scale). The causal
and sliding-window masks are *not* applied: the scores are what the softmax would receive at
the unmasked positions. Tests check that ``softmax(masked scores) @ v`` gives back the heads'
outputs. With a batch, pad on the left so that position ``-1`` is every row's last token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from iclft.models.anatomy import Anatomy, Site


def keep_in(
    out: dict[Any, torch.Tensor],
    key: Any,
    *,
    detach: bool = True,
    select: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], None]:
    """A read function for :meth:`~iclft.models.anatomy.Anatomy.hooks` that stores the
    activation it is shown in ``out[key]``: ``select(x)`` when given (e.g. one position),
    detached unless ``detach`` is false (attribution patching keeps the graph)."""

    def fn(x: torch.Tensor) -> None:
        y = select(x) if select is not None else x
        out[key] = y.detach() if detach else y

    return fn


@torch.no_grad()
def capture(
    anatomy: Anatomy, sites: Iterable[Site], **forward_kwargs: Any
) -> dict[Site, torch.Tensor]:
    """Run the model once (``model(**forward_kwargs)``) and return each site's activation
    ``[batch, pos, features]`` (detached)."""
    store: dict[Site, torch.Tensor] = {}
    with anatomy.hooks({s: keep_in(store, s) for s in sites}):
        anatomy.model(**forward_kwargs)
    return store


@dataclass(frozen=True)
class QK:
    """Queries ``[batch, heads, pos, head_dim]`` and keys ``[batch, kv_heads, pos, head_dim]``
    of one layer, as the attention kernel receives them (after norms and rotary embeddings)."""

    q: torch.Tensor
    k: torch.Tensor
    scaling: float
    softcap: float | None = None

    def scores(
        self,
        query_positions: Sequence[int] | slice = slice(None),
        key_positions: Sequence[int] | slice = slice(None),
    ) -> torch.Tensor:
        """Pre-softmax scores ``[batch, heads, n_query, n_key]`` (no mask applied)."""
        q = self.q[:, :, query_positions]
        k = self.k[:, :, key_positions]
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        s = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
        if self.softcap:
            s = torch.tanh(s / self.softcap) * self.softcap
        return s


@torch.no_grad()
def capture_qk(
    anatomy: Anatomy, layers: Sequence[int] | None = None, **forward_kwargs: Any
) -> dict[int, QK]:
    """Queries and keys of each layer as the attention kernel sees them (see module doc)."""
    layers = list(range(anatomy.n_layers)) if layers is None else list(layers)
    raw: dict[int, dict[str, Any]] = {}
    with anatomy.qk_hooks(layers, raw):
        anatomy.model(**forward_kwargs)
    out: dict[int, QK] = {}
    for layer in layers:
        r = raw[layer]
        q, k = anatomy.rotate(layer, r["q"], r["k"], r["rope"])
        scaling, softcap = anatomy.score_scale(layer)
        out[layer] = QK(q=q, k=k, scaling=scaling, softcap=softcap)
    return out
