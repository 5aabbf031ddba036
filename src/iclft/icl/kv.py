"""The model's forward passes on cached prefixes, and the two layouts suffixes run in.

A prompt's reusable prefix (its instruction and demonstrations) is run once into a key/value
cache (:meth:`KV.prefix_cache`, in fixed blocks so a cache never depends on what ran before
it). Suffixes then run on top of those caches in one of two layouts (the module docstring of
:mod:`iclft.icl.engine` says when each is used):

* *padded* (:meth:`KV.batch_inputs`): one row per suffix, left-padded, on the repeated or
  ragged batch of its prefix caches;
* *packed* (:meth:`KV.pack_inputs` and :meth:`KV.pack_mask`): all suffixes back to back in one
  sequence after the longest prefix's cache, a 4-D mask letting each see only its own prefix
  and its own earlier tokens.

Either way every row computes what it would alone. :class:`EngineStats` counts what ran.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from iclft.faults import oom_point
from iclft.models.anatomy import cache_keyword

#: prefix caches are computed in blocks of this many tokens (see :meth:`KV.prefix_cache`)
PREFIX_BLOCK = 256


@dataclass
class EngineStats:
    prefix_tokens: int = 0  # tokens run to build prefix caches
    suffix_tokens: int = 0  # real (unpadded) tokens run on top of a prefix
    padded_tokens: int = 0  # padding positions computed
    decode_steps: int = 0
    forwards: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    packed_batches: int = 0  # forwards groups run in the packed layout
    branch_tokens: int = 0  # candidates' tokens run on top of their shared query (loglik)
    loglik_fallbacks: int = 0  # candidates merging with their prompt, scored on their own


class KV:
    """Forward passes of ``model`` on cached prefixes: the last ``max_cached_prefixes``
    prefix caches are kept (least recently used dropped first); ``pad_id`` fills padding."""

    def __init__(self, model, pad_id: int, max_cached_prefixes: int = 32):
        self.model = model
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.max_cached_prefixes = max_cached_prefixes
        self.cache_keyword = cache_keyword(model)
        impl = getattr(model.config, "_attn_implementation", None)
        self.mask_kind = "bool" if impl == "sdpa" else "additive"
        self.prefixes: OrderedDict[tuple[int, ...], DynamicCache] = OrderedDict()
        self.stats = EngineStats()

    def clear(self) -> None:
        """Forget cached prefixes (e.g. after the model's weights change)."""
        self.prefixes.clear()

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def forward(self, input_ids, attention_mask, position_ids, cache, logits_to_keep: int):
        self.stats.forwards += 1
        oom_point(input_ids.numel())
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{self.cache_keyword: cache},
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits

    def prefix_cache(self, ids: tuple[int, ...]) -> DynamicCache:
        """Key/value cache of ``ids`` (batch 1).

        Always computed the same way: ``PREFIX_BLOCK``-token blocks from the start, then the
        rest, each extending the (cached, else computed likewise) cache of the blocks before
        it. So a prefix's cache is bit for bit the same whatever was computed before it (shot
        counts nest: the 16-shot prefix reuses the 8-shot one's whole blocks), and the results
        of a call do not depend on how its batches were split between processes."""
        hit = self.prefixes.get(ids)
        if hit is not None:
            self.prefixes.move_to_end(ids)
            self.stats.cache_hits += 1
            return hit
        self.stats.cache_misses += 1
        cut = (len(ids) - 1) // PREFIX_BLOCK * PREFIX_BLOCK
        cache = copy.deepcopy(self.prefix_cache(ids[:cut])) if cut else self.new_cache()
        rest = ids[cut:]
        dev = self.device
        x = torch.tensor([rest], device=dev)
        mask = torch.ones(1, len(ids), dtype=torch.long, device=dev)
        pos = torch.arange(cut, len(ids), device=dev)[None]
        self.forward(x, mask, pos, cache, logits_to_keep=1)
        self.stats.prefix_tokens += len(rest)
        self.prefixes[ids] = cache
        while len(self.prefixes) > self.max_cached_prefixes:
            self.prefixes.popitem(last=False)
        return cache

    def batch_inputs(self, prefixes: Sequence[tuple[int, ...]], suffixes: Sequence[Sequence[int]]):
        """The batch's key/value cache, left-padded suffixes, attention mask and position ids.

        Row r continues its own prefix (``prefixes[r]``, cached at batch 1). Rows sharing one
        prefix repeat its cache; rows with different prefixes get a ragged cache: each prefix
        right-aligned, the empty slots before it masked out, and positions counted from the
        row's own prefix length, so every row computes exactly what it would alone."""
        B = len(suffixes)
        S = max(len(s) for s in suffixes)
        lens = [len(p) for p in prefixes]
        L = max(lens)
        dev = self.device
        ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        smask = torch.zeros((B, S), dtype=torch.long)
        pmask = torch.zeros((B, L), dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, S - len(s) :] = torch.tensor(s, dtype=torch.long)
            smask[i, S - len(s) :] = 1
            pmask[i, L - lens[i] :] = 1
        pos = torch.tensor(lens)[:, None] + smask.cumsum(-1) - 1
        pos = pos.clamp(min=0).masked_fill(smask == 0, 0)
        mask = torch.cat([pmask, smask], dim=1)
        if L == 0:
            cache = self.new_cache()
        elif len(set(prefixes)) == 1:
            cache = copy.deepcopy(self.prefix_cache(prefixes[0]))
            cache.batch_repeat_interleave(B)
        else:
            cache = self.ragged_cache(prefixes, L)
        n_real = sum(len(s) for s in suffixes)
        self.stats.suffix_tokens += n_real
        self.stats.padded_tokens += B * S - n_real
        return ids.to(dev), mask.to(dev), pos.to(dev), cache

    def ragged_cache(self, prefixes: Sequence[tuple[int, ...]], L: int) -> DynamicCache:
        """Stack per-prefix caches into one batch cache, each right-aligned in ``L`` slots."""
        caches = {p: self.prefix_cache(p) for p in dict.fromkeys(prefixes) if p}
        some = next(iter(caches.values()))
        cache = self.new_cache()
        for layer_idx, layer in enumerate(some.layers):
            H = layer.keys.shape[1]
            kv = []
            for which in ("keys", "values"):
                ref = getattr(layer, which)
                out = ref.new_zeros((len(prefixes), H, L, ref.shape[-1]))
                for r, p in enumerate(prefixes):
                    if p:
                        out[r, :, L - len(p) :] = getattr(caches[p].layers[layer_idx], which)[0]
                kv.append(out)
            cache.update(kv[0], kv[1], layer_idx)
        return cache

    def packed_cache(self, base: tuple[int, ...]) -> DynamicCache:
        """A fresh cache holding the stored tensors of prefix ``base``: a forward grows it by
        concatenation, leaving the stored cache as it was."""
        cache = self.new_cache()
        if base:
            for i, layer in enumerate(self.prefix_cache(base).layers):
                cache.update(layer.keys, layer.values, i)
        return cache

    def pack_inputs(self, prefixes: Sequence[tuple[int, ...]], suffixes: Sequence[Sequence[int]]):
        """The packed layout: the cache of the longest prefix (every other prefix of the group
        is a token prefix of it) followed by all suffixes back to back in one sequence.

        Returns the cache, the packed ids and position ids, ``rows`` (the row of each packed
        token), ``slot_row`` (the row owning each cache slot after this forward, -1 for the
        shared prefix), ``plen`` (each row's prefix length) and ``ends`` (index of each row's
        last token in the pack)."""
        base = max(prefixes, key=len)
        cache = self.packed_cache(base)
        lens = torch.tensor([len(x) for x in suffixes])
        plen = torch.tensor([len(p) for p in prefixes])
        rows = torch.repeat_interleave(torch.arange(len(suffixes)), lens)
        starts = lens.cumsum(0) - lens
        pos = plen[rows] + torch.arange(len(rows)) - starts[rows]
        ids = torch.tensor([t for x in suffixes for t in x], dtype=torch.long)
        slot_row = torch.cat([torch.full((len(base),), -1, dtype=torch.long), rows])
        self.stats.suffix_tokens += len(ids)
        self.stats.packed_batches += 1
        return cache, ids, pos, rows, slot_row, plen, starts + lens - 1

    def pack_mask(
        self,
        rows: torch.Tensor,
        slot_row: torch.Tensor,
        plen: torch.Tensor,
        branch: torch.Tensor | None = None,
        slot_branch: torch.Tensor | None = None,
    ):
        """4-D mask for queries of ``rows`` occupying the last ``len(rows)`` cache slots: a
        query sees the first ``plen[row]`` slots (its own prefix) and its own row's earlier
        slots, nothing of the other rows. With ``branch`` (the branch of each query, -1 for a
        row's trunk) and ``slot_branch`` (the same per slot), a row is a tree: a branch token
        sees its row's trunk and its own branch, not the row's other branches."""
        n_kv = len(slot_row)
        q_slot = torch.arange(n_kv - len(rows), n_kv)
        j = torch.arange(n_kv)
        own = (slot_row[None] == rows[:, None]) & (j[None] <= q_slot[:, None])
        if branch is not None and slot_branch is not None:
            own &= (slot_branch[None] == -1) | (slot_branch[None] == branch[:, None])
        allowed = ((j[None] < plen[rows][:, None]) | own)[None, None].to(self.device)
        if self.mask_kind == "bool":  # sdpa: True = attend
            return allowed
        dtype = self.model.dtype  # eager attention adds the mask to the scores
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
