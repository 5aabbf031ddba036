"""Reading activations out of a forward pass, by site name.

* :func:`capture` returns the activations of any sites (``L3.HEADS``, ``L3.ATTN``, ...).
* :func:`attention_outputs` returns each layer's attention output (the output projection's
  output, before any post-norm and the residual add) at one position: the ``h`` of SimAOU.
* :func:`attention_scores` returns each head's *pre-softmax* attention scores from one
  position to chosen key positions: the ``m`` of SimAM.

How the scores are obtained: fused attention kernels (sdpa) never materialise the scores, so we
recompute them from the queries and keys the model itself made. Hooks read q and k where the
architecture finishes them before rotary embeddings (the ``q_proj``/``k_proj`` outputs for
Llama/Qwen2, the ``q_norm``/``k_norm`` outputs for Gemma 3, the q|k|v split of ``c_attn`` for
GPT-2), a pre-hook on the attention module reads the ``(cos, sin)`` rotary tables the model
passed in, and we apply the same rotation (``transformers``' ``apply_rotary_pos_emb``). Then

    score[h, i, j] = (q_i^h . k_j^{g(h)}) * scaling        (softcapped when the model softcaps)

with ``g(h) = h // (n_heads / n_kv_heads)`` (grouped-query attention) and ``scaling`` the
attention module's own (``head_dim**-0.5``, Gemma: ``query_pre_attn_scalar**-0.5``). The causal
and sliding-window masks are *not* applied: the scores are what the softmax would receive at
the unmasked positions. Tests check that ``softmax(masked scores) @ v`` gives back the heads'
outputs. With a batch, pad on the left so that position ``-1`` is every row's last token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from iclft.analysis.anatomy import Anatomy, Site, _get


@torch.no_grad()
def capture(
    anatomy: Anatomy, sites: Iterable[Site], **forward_kwargs: Any
) -> dict[Site, torch.Tensor]:
    """Run the model once (``model(**forward_kwargs)``) and return each site's activation
    ``[batch, pos, features]`` (detached)."""
    store: dict[Site, torch.Tensor] = {}

    def keep(site: Site):
        def fn(x: torch.Tensor) -> None:
            store[site] = x.detach()

        return fn

    with anatomy.hooks({s: keep(s) for s in sites}):
        anatomy.model(**forward_kwargs)
    return store


def attention_outputs(anatomy: Anatomy, position: int = -1, **forward_kwargs: Any) -> torch.Tensor:
    """``[layers, batch, d_model]``: every layer's attention output at ``position``."""
    sites = [Site(layer, "attn") for layer in range(anatomy.n_layers)]
    acts = capture(anatomy, sites, **forward_kwargs)
    return torch.stack([acts[s][:, position] for s in sites])


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


@contextlib.contextmanager
def _qk_hooks(
    anatomy: Anatomy, layers: Sequence[int], out: dict[int, dict[str, Any]]
) -> Iterator[None]:
    spec = anatomy.spec
    handles = []
    H, Hkv, d = anatomy.n_heads, anatomy.n_kv_heads, anatomy.head_dim

    def heads(x: torch.Tensor, n: int) -> torch.Tensor:  # [B, T, n*d] -> [B, n, T, d]
        return x.view(*x.shape[:2], n, d).transpose(1, 2)

    try:
        for layer in layers:
            attn = anatomy.attention(layer)
            slot = out.setdefault(layer, {})

            def pre(module, args, kwargs, _slot=slot):
                _slot["rope"] = kwargs.get("position_embeddings")

            handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
            if spec.qkv is not None:

                def fused(module, args, output, _slot=slot):
                    q, k, _ = output.split(H * d, dim=2)
                    _slot["q"], _slot["k"] = heads(q, H), heads(k, Hkv)

                handles.append(_get(attn, spec.qkv).register_forward_hook(fused))
            elif spec.q_norm is not None:  # already [B, n, T, d]
                for name, key in ((spec.q_norm, "q"), (spec.k_norm, "k")):

                    def normed(module, args, output, _slot=slot, _key=key):
                        _slot[_key] = output

                    handles.append(_get(attn, name).register_forward_hook(normed))
            else:
                for name, key, n in ((spec.q, "q", H), (spec.k, "k", Hkv)):

                    def proj(module, args, output, _slot=slot, _key=key, _n=n):
                        _slot[_key] = heads(output, _n)

                    handles.append(_get(attn, name).register_forward_hook(proj))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_qk(
    anatomy: Anatomy, layers: Sequence[int] | None = None, **forward_kwargs: Any
) -> dict[int, QK]:
    """Queries and keys of each layer as the attention kernel sees them (see module doc)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    layers = list(range(anatomy.n_layers)) if layers is None else list(layers)
    raw: dict[int, dict[str, Any]] = {}
    with _qk_hooks(anatomy, layers, raw):
        anatomy.model(**forward_kwargs)
    out: dict[int, QK] = {}
    for layer in layers:
        r = raw[layer]
        q, k = r["q"], r["k"]
        if anatomy.spec.rope:
            cos, sin = r["rope"]
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        attn = anatomy.attention(layer)
        scaling = float(getattr(attn, "scaling", None) or anatomy.head_dim**-0.5)
        softcap = getattr(attn, "attn_logit_softcapping", None)
        out[layer] = QK(q=q, k=k, scaling=scaling, softcap=softcap)
    return out


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
