"""The batched scoring engine: greedy generation and log-likelihood with prefix caching.

Why hand-written: ``model.generate`` re-encodes every prompt from scratch. k-shot prompts of a
sweep share long prefixes (the instruction and the demonstrations), so the engine

1. tokenises each full prompt exactly as plain ``generate`` would (no segment-wise
   tokenisation, so the model sees the same tokens);
2. finds the longest token prefix it shares with its prefix hint (the instruction plus
   demonstrations) and computes the key/value cache of that prefix once, in fixed blocks of
   ``PREFIX_BLOCK`` tokens that longer prefixes reuse (shot counts nest: the 16-shot prefix
   extends the 8-shot one's whole blocks), so a cache never depends on what ran before it;
3. runs the remaining suffixes on top of the caches, in one of two layouts:

   * *packed* (shared demonstrations): when the prefixes of many prompts nest (the k-shot
     prefixes of one shared demonstration list are all token prefixes of the longest one),
     the suffixes are laid back to back in ONE sequence after the longest prefix's cache, with
     a 4-D attention mask letting each suffix see only the first ``len(own prefix)`` cached
     positions and its own earlier tokens, and position ids counted from its own prefix.
     Nothing is padded and the prefix cache is never repeated per row (the batched layout
     below copies it B times, and again at every decoding step). This is the tree/packed
     attention used for shared-prefix batch inference, done here with the model's own
     attention and a custom mask. (Computing only the unmasked pairs, prefix and own tokens
     merged by their softmax sums as in Hydragen, was tried and was slower on CPU: the
     separate exponentials cost more than the fused kernel spends on masked pairs.);
   * *batched* (everything else, e.g. per-query demonstrations): rows sharing a prefix repeat
     its cache; rows with different prefixes get a ragged cache with each prefix
     right-aligned. Suffixes are padded on the left, so padding sits *between* prefix and
     suffix; the attention mask hides it and position ids count from each row's own prefix
     length.

   Either way every prompt computes what it would alone;
4. for log-likelihoods, runs each prompt once with its candidates on top: the prompt's last
   logits score every candidate's first token, and a candidate's further tokens run as a
   branch (packed: the candidates of a prompt laid after it, a tree mask letting each see
   the prompt and itself only; padded: the batch cache repeated per candidate and extended
   by its tokens). A candidate whose encoding merges with the prompt's last token is run on
   its own whole sequence instead, so the tokens scored are always those of
   ``encode(prompt + candidate)``;
5. decodes greedily, one token per step for every live prompt, dropping prompts as they
   finish: an end-of-sequence token, or (``stop="newline"``, the default) a newline *after the
   answer has started* (leading whitespace and newlines are skipped, so a model that answers on
   the next line is read, not scored empty); ``stop="none"`` runs to ``max_new_tokens``;
   ``stop="budget"`` runs to ``max_new_tokens`` counted from the answer: a first token that is
   a lone space is not counted (the seed paper's fixed-length continuation: its prompts ended
   with the space that ours leave to the answer, see :data:`iclft.icl.scoring.PAPER_NEW_TOKENS`).

The maths of every forward pass is the model's own; only the bookkeeping is ours.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria

from iclft.faults import oom_point
from iclft.icl.settings import BATCH_SIZE, MAX_NEW_TOKENS
from iclft.models.anatomy import cache_keyword, known_family, packable_families

Progress = Callable[[int], None]

#: how a greedy continuation ends (besides end-of-sequence and the token budget)
STOPS = ("newline", "none", "budget")


def finished(text: str, stop: str) -> bool:
    """Whether a continuation is complete: a newline once non-whitespace text has begun."""
    return stop == "newline" and "\n" in text.lstrip()


def counted_tokens(first: str, n_tokens: int, stop: str) -> int:
    """Tokens of a continuation that count against the budget: under ``stop="budget"`` a first
    token (decoded as ``first``) that is a lone space does not count."""
    return n_tokens - (stop == "budget" and first == " ")


def decode_steps(max_new: int, stop: str) -> int:
    """The most tokens a continuation may hold (one more under ``stop="budget"``)."""
    return max_new + (stop == "budget")


#: prefix caches are computed in blocks of this many tokens (see ``Engine._prefix_cache``)
PREFIX_BLOCK = 256

#: the first batch size ``batch_size="auto"`` tries (lm-evaluation-harness's default maximum)
AUTO_BATCH = 64


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


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def sliding_window(model) -> int | None:
    """The attention window of the model's sliding-window layers, if it has any."""
    cfg = getattr(model.config, "text_config", None) or model.config
    # GPT-Neo's local layers: a window of ``window_size`` cache slots
    if "local" in (getattr(cfg, "attention_layers", None) or []):
        return int(cfg.window_size)
    window = getattr(cfg, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    if getattr(cfg, "use_sliding_window", True) is False:
        return None
    return window


def context_limit(model, tokenizer=None) -> int | None:
    """The longest sequence the model accepts, from its config (``None`` if it does not say)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class NewlineStop(StoppingCriteria):
    """Stopping rule for plain ``generate`` matching the engine's: stop at a newline after the
    answer has started (used by the benchmark and tests that compare with ``generate``)."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tok, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        done = [
            finished(self.tok.decode(row[self.prompt_len :], skip_special_tokens=False), "newline")
            for row in input_ids
        ]
        return torch.tensor(done, device=input_ids.device)


class Engine:
    """Greedy generation and candidate log-likelihoods over many prompts, fast.

    ``batch_size`` caps rows per forward; ``max_batch_tokens`` caps rows x suffix length.
    ``pack`` chooses the packed layout for prompts whose prefixes nest (``None``: wherever the
    model allows it: ``sdpa`` or ``eager`` attention, no sliding window, a family in
    ``Family.packable``); ``max_pack_tokens`` caps the suffix tokens laid into one packed
    sequence (a pack's attention runs over all its pairs, masked ones included, so it grows with
    the pack's square). ``share_queries`` (default) scores all candidates of a prompt on one
    run of it; ``False`` runs prompt + candidate whole for each candidate (the reference path).
    ``cache`` (a :class:`~iclft.icl.cache.ResponseCache`) answers requests seen before.
    ``shard`` (a :class:`~iclft.distributed.Shard`, under ``accelerate launch``) runs this
    process's share of every call's planned batches and returns the whole result, gathered from
    all processes (see :meth:`_share`); ``prompts_per_process`` counts each process's prompts.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int | str = BATCH_SIZE,
        max_batch_tokens: int = 8192,
        max_new_tokens: int = MAX_NEW_TOKENS,
        max_cached_prefixes: int = 32,
        pack: bool | None = None,
        max_pack_tokens: int = 1024,
        share_queries: bool = True,
        cache=None,
        shard=None,
    ):
        self.model, self.tok = model, tokenizer
        self.device = next(model.parameters()).device
        # "auto": start at AUTO_BATCH rows and halve on out-of-memory (lm-evaluation-harness's
        # --batch_size auto); the size that worked is kept for later calls
        self.auto_batch = batch_size == "auto"
        self.batch_size = AUTO_BATCH if self.auto_batch else max(1, int(batch_size))
        self.max_batch_tokens = max_batch_tokens
        self.max_new_tokens = max_new_tokens
        self.max_cached_prefixes = max_cached_prefixes
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        # Padding counts against a sliding window (the window is measured in cache slots), so
        # rows whose sequence can outgrow the window are batched only with rows of the same
        # suffix length, which need no padding.
        self.window = sliding_window(model)
        # The packed layout needs a custom 4-D mask (flash-attention-2 takes none) and slot
        # distances that are not position distances (which a sliding window would misread).
        impl = getattr(model.config, "_attn_implementation", None)
        kind = getattr(model.config, "model_type", None)
        family = known_family(kind)
        self._cache_keyword = cache_keyword(model)
        self._mask_kind = "bool" if impl == "sdpa" else "additive"
        can_pack = self.window is None and impl in ("sdpa", "eager")
        can_pack = can_pack and family is not None and family.packable
        if pack and not can_pack:
            known = ", ".join(packable_families())
            raise ValueError(
                f"the packed layout needs sdpa or eager attention, no sliding window and a model "
                f"family known to honour 4-D masks (attention {impl!r}, window {self.window}, "
                f"model type {kind!r}; known: {known})"
            )
        self.pack = can_pack if pack is None else bool(pack)
        self.max_pack_tokens = max(1, int(max_pack_tokens))
        self.share_queries = share_queries
        self.cache = cache  # an iclft.icl.cache.ResponseCache, or None
        self.shard = shard  # an iclft.distributed.Shard, or None (one process)
        self._caps0 = self._caps()  # the caps every process plans with (see _share)
        self.prompts_per_process = [0] * (shard.world if shard is not None else 1)
        self.busy_seconds = 0.0  # time spent computing (not waiting for other processes)
        self._prefixes: OrderedDict[tuple[int, ...], DynamicCache] = OrderedDict()
        self._encoded: dict[str, list[int]] = {}
        self.stats = EngineStats()

    # ----- tokenisation -----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids = self._encoded.get(text)
        if ids is None:
            ids = list(self.tok(text, add_special_tokens=True)["input_ids"])
            if len(self._encoded) > 100_000:
                self._encoded.clear()
            self._encoded[text] = ids
        return ids

    def clear(self) -> None:
        """Forget cached prefixes (e.g. after the model's weights change)."""
        self._prefixes.clear()

    # ----- model calls ------------------------------------------------------------------
    def _new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def _forward(self, input_ids, attention_mask, position_ids, cache, logits_to_keep: int):
        self.stats.forwards += 1
        oom_point(input_ids.numel())
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{self._cache_keyword: cache},
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits

    def _prefix_cache(self, ids: tuple[int, ...]) -> DynamicCache:
        """Key/value cache of ``ids`` (batch 1).

        Always computed the same way: ``PREFIX_BLOCK``-token blocks from the start, then the
        rest, each extending the (cached, else computed likewise) cache of the blocks before
        it. So a prefix's cache is bit for bit the same whatever was computed before it (shot
        counts nest: the 16-shot prefix reuses the 8-shot one's whole blocks), and the results
        of a call do not depend on how its batches were split between processes."""
        hit = self._prefixes.get(ids)
        if hit is not None:
            self._prefixes.move_to_end(ids)
            self.stats.cache_hits += 1
            return hit
        self.stats.cache_misses += 1
        cut = (len(ids) - 1) // PREFIX_BLOCK * PREFIX_BLOCK
        cache = copy.deepcopy(self._prefix_cache(ids[:cut])) if cut else self._new_cache()
        rest = ids[cut:]
        dev = self.device
        x = torch.tensor([rest], device=dev)
        mask = torch.ones(1, len(ids), dtype=torch.long, device=dev)
        pos = torch.arange(cut, len(ids), device=dev)[None]
        self._forward(x, mask, pos, cache, logits_to_keep=1)
        self.stats.prefix_tokens += len(rest)
        self._prefixes[ids] = cache
        while len(self._prefixes) > self.max_cached_prefixes:
            self._prefixes.popitem(last=False)
        return cache

    def _batch_inputs(self, prefixes: Sequence[tuple[int, ...]], suffixes: Sequence[Sequence[int]]):
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
            cache = self._new_cache()
        elif len(set(prefixes)) == 1:
            cache = copy.deepcopy(self._prefix_cache(prefixes[0]))
            cache.batch_repeat_interleave(B)
        else:
            cache = self._ragged_cache(prefixes, L)
        n_real = sum(len(s) for s in suffixes)
        self.stats.suffix_tokens += n_real
        self.stats.padded_tokens += B * S - n_real
        return ids.to(dev), mask.to(dev), pos.to(dev), cache

    def _ragged_cache(self, prefixes: Sequence[tuple[int, ...]], L: int) -> DynamicCache:
        """Stack per-prefix caches into one batch cache, each right-aligned in ``L`` slots."""
        caches = {p: self._prefix_cache(p) for p in dict.fromkeys(prefixes) if p}
        some = next(iter(caches.values()))
        cache = self._new_cache()
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

    def _packed_cache(self, base: tuple[int, ...]) -> DynamicCache:
        """A fresh cache holding the stored tensors of prefix ``base``: a forward grows it by
        concatenation, leaving the stored cache as it was."""
        cache = self._new_cache()
        if base:
            for i, layer in enumerate(self._prefix_cache(base).layers):
                cache.update(layer.keys, layer.values, i)
        return cache

    def _pack_inputs(self, prefixes: Sequence[tuple[int, ...]], suffixes: Sequence[Sequence[int]]):
        """The packed layout: the cache of the longest prefix (every other prefix of the group
        is a token prefix of it) followed by all suffixes back to back in one sequence.

        Returns the cache, the packed ids and position ids, ``rows`` (the row of each packed
        token), ``slot_row`` (the row owning each cache slot after this forward, -1 for the
        shared prefix), ``plen`` (each row's prefix length) and ``ends`` (index of each row's
        last token in the pack)."""
        base = max(prefixes, key=len)
        cache = self._packed_cache(base)
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

    def _pack_mask(
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
        if self._mask_kind == "bool":  # sdpa: True = attend
            return allowed
        dtype = self.model.dtype  # eager attention adds the mask to the scores
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)

    # ----- grouping ---------------------------------------------------------------------
    def _plan(
        self,
        seqs: Sequence[Sequence[int]],
        hints: Sequence[Sequence[int] | None],
        keep: Sequence[int],
        extra: int = 0,
        more: Sequence[int] | None = None,
    ):
        """Assign each item its reusable prefix; yield ``(packed, prefixes, [item indices])``.

        ``keep[i]`` is how many trailing tokens of item i must stay in the suffix (at least 1,
        the position whose logits are needed); ``extra`` is how many tokens may be generated
        (or run on top of an item); ``more[i]`` counts tokens item i adds to its batch besides
        its suffix (its candidates' branches), for the batch size caps.
        Items are ordered by prefix (lexicographically, so a prefix comes right before the
        prefixes that extend it: nested shot counts build on each other's caches). Items whose
        prefixes nest with at least one other item's go to packed groups when the engine packs;
        the rest are cut into padded batches. Models with a sliding window batch only identical
        prefixes and, when the window can be reached, identical suffix lengths (padding counts
        against the window)."""
        more = more or [0] * len(seqs)
        pref = []
        for i, (s, h) in enumerate(zip(seqs, hints)):
            n = max(min(_lcp(s, h), len(s) - keep[i]), 0) if h else 0
            pref.append(tuple(s[:n]))
        if self.window is None:
            order = sorted(range(len(seqs)), key=lambda i: (pref[i], len(seqs[i])))
            if not self.pack:
                yield from ((False, p, b) for p, b in self._cut(order, pref, seqs, more))
                return
            loose: list[int] = []
            for chain in self._chains(order, pref):
                if len(chain) > 1:
                    yield from ((True, p, b) for p, b in self._cut_packed(chain, pref, seqs, more))
                else:
                    loose += chain
            yield from ((False, p, b) for p, b in self._cut(loose, pref, seqs, more))
            return
        groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
        for i, s in enumerate(seqs):
            exact = len(s) + extra >= self.window
            groups.setdefault((pref[i], len(s) - len(pref[i]) if exact else -1), []).append(i)
        for key in sorted(groups, key=lambda k: (len(k[0]), k[1])):
            order = sorted(groups[key], key=lambda i: len(seqs[i]))
            yield from ((False, p, b) for p, b in self._cut(order, pref, seqs, more))

    def _caps(self) -> tuple[int, int, int]:
        return (self.batch_size, self.max_batch_tokens, self.max_pack_tokens)

    def _share(
        self,
        seqs: Sequence[Sequence[int]],
        hints: Sequence[Sequence[int] | None],
        keep: Sequence[int],
        extra: int = 0,
        more: Sequence[int] | None = None,
    ) -> tuple[list, list[int]]:
        """``(batches this process runs, owner rank of each item)`` of one :meth:`_plan`.

        One process runs the whole plan. With a :attr:`shard`, every process makes the plan
        one process would make with the caps the engine started with (a pure function of the
        items), and runs its contiguous share of those batches (balanced by tokens): each item
        runs in the batch it would run in alone, so results do not depend on the number of
        processes. After an out-of-memory halving (``batch_size="auto"``) a process plans its
        own items again with its smaller caps; which items are whose does not change."""
        if self.shard is None:
            plan = list(self._plan(seqs, hints, keep, extra, more))
            return plan, [0] * len(seqs)
        caps = self._caps()
        self.batch_size, self.max_batch_tokens, self.max_pack_tokens = self._caps0
        try:
            plan0 = list(self._plan(seqs, hints, keep, extra, more))
        finally:
            self.batch_size, self.max_batch_tokens, self.max_pack_tokens = caps
        more_ = list(more or [0] * len(seqs))
        owners = self.shard.assign([self._cost(b, pre, seqs, more_, extra) for _, pre, b in plan0])
        item_owner = [0] * len(seqs)
        for (_, _, b), o in zip(plan0, owners):
            for i in b:
                item_owner[i] = o
        mine = [p for p, o in zip(plan0, owners) if o == self.shard.rank]
        if caps != self._caps0:
            own = sorted(i for _, _, b in mine for i in b)
            sub = self._plan(
                [seqs[i] for i in own], [hints[i] for i in own], [keep[i] for i in own],
                extra, [more_[i] for i in own],
            )  # fmt: skip
            mine = [(packed, pre, [own[j] for j in b]) for packed, pre, b in sub]
        return mine, item_owner

    @staticmethod
    def _cost(batch, prefixes, seqs, more, extra: int) -> float:
        """A batch's work, to balance processes: the tokens it runs on top of its prefixes
        (suffixes, candidates, generated tokens), each weighted by the context it attends to
        (a token's matmuls cost the same everywhere; its attention grows with the context).
        The prefixes themselves are cached and not counted."""
        return sum(
            (len(seqs[i]) - len(p) + more[i] + extra) * (1 + len(p) / 2048)
            for i, p in zip(batch, prefixes)
        )

    def _count(self, owners: Sequence[int]) -> None:
        """Note whose each prompt of this attempt is (counted once the attempt succeeds)."""
        self._pending = list(owners)

    def _gathered(self, local: list) -> list:
        """Fill the entries other processes computed (``None`` here) from their results."""
        if self.shard is None:
            return local

        def computed(v) -> bool:  # a loglik row may hold some candidates only
            return any(x is not None for x in v) if isinstance(v, list) else v is not None

        parts = self.shard.gather({i: v for i, v in enumerate(local) if computed(v)})
        out = list(local)
        for part in parts:
            for i, v in part.items():
                if isinstance(v, list):
                    have = out[i] if out[i] is not None else [None] * len(v)
                    out[i] = [a if a is not None else b for a, b in zip(have, v)]
                else:
                    out[i] = v
        return out

    def _sharded(self, progress: Progress | None, total: int):
        """``(progress callback for this process, finish)`` of one call (see Shard.progress)."""
        if self.shard is None:
            return progress, lambda: None
        return self.shard.progress(progress, total)

    @staticmethod
    def _chains(order: list[int], pref):
        """Split prefix-sorted items into runs whose (non-empty) prefixes all nest: each is a
        token prefix of the run's longest. Items without a prefix are runs of their own."""
        chain: list[int] = []
        base: tuple[int, ...] = ()
        for i in order:
            p = pref[i]
            if chain and p and base and p[: len(base)] == base:
                chain.append(i)
                base = p  # sorted order: a nesting prefix is never shorter than the base
                continue
            if chain:
                yield chain
            chain, base = [i], p
            if not p:
                yield chain
                chain = []
        if chain:
            yield chain

    def _cut_packed(self, order: list[int], pref, seqs, more):
        """Packs of at most ``batch_size`` rows and ``max_pack_tokens`` suffix tokens."""
        batch: list[int] = []
        tokens = 0
        for i in order:
            slen = len(seqs[i]) - len(pref[i]) + more[i]
            if batch and (len(batch) >= self.batch_size or tokens + slen > self.max_pack_tokens):
                yield [pref[j] for j in batch], batch
                batch, tokens = [], 0
            batch.append(i)
            tokens += slen
        if batch:
            yield [pref[j] for j in batch], batch

    def _cut(self, order: list[int], pref, seqs, more):
        """Batches of at most ``batch_size`` rows and ``max_batch_tokens`` rows x suffix
        length (the cache, rows x prefix length, is capped at 4x that)."""
        batch: list[int] = []
        longest = widest = 0
        for i in order:
            slen, plen = len(seqs[i]) - len(pref[i]) + more[i], len(pref[i])
            n = len(batch) + 1
            if batch and (
                n > self.batch_size
                or n * max(longest, slen) > self.max_batch_tokens
                or n * max(widest, plen) > 4 * self.max_batch_tokens
            ):
                yield [pref[j] for j in batch], batch
                batch, longest, widest = [], 0, 0
            batch.append(i)
            longest, widest = max(longest, slen), max(widest, plen)
        if batch:
            yield [pref[j] for j in batch], batch

    # ----- public API -------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        prefixes: Sequence[str | None] | None = None,
        *,
        max_new_tokens: int | None = None,
        stop: str = "newline",
        progress: Progress | None = None,
    ) -> list[str]:
        """Greedy continuation of each prompt, ended by end-of-sequence, the token budget, or
        ``stop``: "newline" (after the answer began), "none" or "budget" (see :data:`STOPS`).

        ``prefixes[i]`` is a hint: text that prompt i starts with and that other prompts share.
        Returns the decoded continuations (including the newline that stopped them)."""
        if stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
        max_new = max_new_tokens or self.max_new_tokens
        advance, finish = self._sharded(progress, len(prompts))
        if self.cache is not None:
            hints = list(prefixes or [None] * len(prompts))

            def compute(idx: list[int]) -> list[str]:
                return self._gathered(
                    self._fitting(
                        lambda prog: self._generate(
                            [prompts[i] for i in idx], [hints[i] for i in idx], max_new, stop, prog
                        ),
                        advance,
                    )
                )

            settings = [{"max_new_tokens": max_new, "stop": stop}] * len(prompts)
            out = self._cached("generate", prompts, settings, compute, advance)
        else:
            out = self._gathered(
                self._fitting(
                    lambda prog: self._generate(prompts, prefixes, max_new, stop, prog), advance
                )
            )
        finish()
        return out

    def _cached(self, request: str, prompts, settings, compute, progress):
        """The response cache's answer; with several processes they agree on what is missing
        (anything one lacks, all compute) and rank 0 alone stores the new responses."""
        if self.shard is None:
            return self.cache.cached(request, prompts, settings, compute, progress)
        shard = self.shard

        def agree(missing: list[int]) -> list[int]:
            return sorted(set().union(*shard.gather(missing)))

        return self.cache.cached(
            request, prompts, settings, compute, progress if shard.rank == 0 else None,
            agree=agree, store=shard.rank == 0,
        )  # fmt: skip

    def _fitting(self, run: Callable[[Progress | None], Any], progress: Progress | None) -> Any:
        """``run(progress)``; with ``batch_size="auto"``, on out-of-memory halve the batch (and
        the token caps of batches and packs), drop the prefix caches and run it again (progress
        already reported by a failed attempt is not reported twice)."""
        reported = 0

        def once(n: int) -> None:
            nonlocal reported, seen
            seen += n
            if progress and seen > reported:
                progress(seen - reported)
                reported = seen

        while True:
            seen = 0
            self._pending: list[int] = []
            t0 = time.perf_counter()
            try:
                out = run(once if progress else None)
            except torch.OutOfMemoryError:
                if not self.auto_batch or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
                self.max_pack_tokens = max(1, self.max_pack_tokens // 2)
                self.clear()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            for o in self._pending:
                self.prompts_per_process[o] += 1
            self.busy_seconds += time.perf_counter() - t0
            return out

    def _generate(self, prompts, prefixes, max_new: int, stop: str, progress) -> list[str]:
        seqs = [self.encode(p) for p in prompts]
        hints = [self.encode(h) if h else None for h in (prefixes or [None] * len(prompts))]
        outs: list[str | None] = [None] * len(prompts)
        batches, owners = self._share(seqs, hints, [1] * len(seqs), max_new)
        self._count(owners)
        for packed, prefixes_, batch in batches:
            suffixes = [seqs[i][len(p) :] for i, p in zip(batch, prefixes_)]
            run = self._greedy_packed if packed else self._greedy
            for i, t in zip(batch, run(prefixes_, suffixes, max_new, stop)):
                outs[i] = t
            if progress:
                progress(len(batch))
        return outs

    def _advance(
        self, logits, active: list[int], gen, texts, stop: str, max_new: int
    ) -> tuple[list[int], torch.Tensor]:
        """One greedy step: append each live row's argmax token; return the positions (in
        ``active``) of rows still going and the tokens just chosen."""
        nxt = logits.argmax(-1)
        keep = []
        for r, (row, t) in enumerate(zip(active, nxt.tolist())):
            if t in self.eos_ids:
                continue
            gen[row].append(t)
            texts[row] = self.tok.decode(gen[row], skip_special_tokens=False)
            first = self.tok.decode(gen[row][:1]) if stop == "budget" else ""
            spent = counted_tokens(first, len(gen[row]), stop) >= max_new
            if not (spent or finished(texts[row], stop)):
                keep.append(r)
        return keep, nxt

    def _greedy(self, prefixes, suffixes, max_new: int, stop: str) -> list[str]:
        ids, mask, pos, cache = self._batch_inputs(prefixes, suffixes)
        logits = self._forward(ids, mask, pos, cache, logits_to_keep=1)[:, -1]
        B = len(suffixes)
        gen: list[list[int]] = [[] for _ in range(B)]
        texts = [""] * B
        active = list(range(B))  # original row of each live row
        last_pos = pos[:, -1]
        steps = decode_steps(max_new, stop)
        for step in range(steps):
            keep, nxt = self._advance(logits, active, gen, texts, stop, max_new)
            if not keep or step == steps - 1:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                mask, nxt, last_pos = mask[sel], nxt[sel], last_pos[sel]
                active = [active[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            last_pos = last_pos + 1
            self.stats.decode_steps += 1
            logits = self._forward(nxt[:, None], mask, last_pos[:, None], cache, 1)[:, -1]
        return texts

    def _greedy_packed(self, prefixes, suffixes, max_new: int, stop: str) -> list[str]:
        """Greedy decoding in the packed layout: each step appends one token per live row to
        the single packed sequence; finished rows simply stop adding (their slots stay,
        masked from everyone else)."""
        cache, ids, pos, rows, slot_row, plen, ends = self._pack_inputs(prefixes, suffixes)
        dev = self.device
        mask = self._pack_mask(rows, slot_row, plen)
        logits = self._forward(ids[None].to(dev), mask, pos[None].to(dev), cache, ends.to(dev))[0]
        B = len(suffixes)
        gen: list[list[int]] = [[] for _ in range(B)]
        texts = [""] * B
        active = list(range(B))
        last_pos = pos[ends]
        steps = decode_steps(max_new, stop)
        for step in range(steps):
            keep, nxt = self._advance(logits, active, gen, texts, stop, max_new)
            if not keep or step == steps - 1:
                break
            active = [active[r] for r in keep]
            live = torch.tensor(active)
            nxt, last_pos = nxt[keep], last_pos[keep] + 1
            slot_row = torch.cat([slot_row, live])
            mask = self._pack_mask(live, slot_row, plen)
            self.stats.decode_steps += 1
            logits = self._forward(nxt[None], mask, last_pos[None].to(dev), cache, 0)[0]
        return texts

    @torch.inference_mode()
    def loglik(
        self,
        prompts: Sequence[str],
        continuations: Sequence[Sequence[str]],
        prefixes: Sequence[str | None] | None = None,
        *,
        progress: Progress | None = None,
    ) -> list[list[float]]:
        """Total log-probability of each continuation given its prompt (teacher-forced).

        Tokenisation follows lm-evaluation-harness: encode ``prompt + continuation`` whole and
        score the tokens after ``len(encode(prompt))``. Each prompt runs once, with only its
        candidates' tokens on top (see :meth:`_loglik_shared`); a candidate whose first token
        merges with the prompt's last (the whole encoding does not start with the prompt's)
        is scored on its own whole sequence instead, from the first token that differs."""
        advance, finish = self._sharded(progress, len(prompts))
        if self.cache is not None:
            hints = list(prefixes or [None] * len(prompts))

            def compute(idx: list[int]) -> list[list[float]]:
                return self._gathered(
                    self._fitting(
                        lambda prog: self._loglik(
                            [prompts[i] for i in idx],
                            [continuations[i] for i in idx],
                            [hints[i] for i in idx],
                            prog,
                        ),
                        advance,
                    )
                )

            conts = [list(c) for c in continuations]
            out = self._cached("loglik", prompts, conts, compute, advance)
        else:
            out = self._gathered(
                self._fitting(
                    lambda prog: self._loglik(prompts, continuations, prefixes, prog), advance
                )
            )
        finish()
        return out

    def _loglik(self, prompts, continuations, prefixes, progress) -> list[list[float]]:
        shared: dict[int, list[tuple[int, list[int]]]] = {}  # prompt -> [(cand, tokens)]
        alone: list[tuple[int, int, list[int], int]] = []  # (prompt, cand, whole, n scored)
        ctxs: dict[int, list[int]] = {}
        for i, (p, conts) in enumerate(zip(prompts, continuations)):
            ctx = ctxs[i] = self.encode(p)
            for j, c in enumerate(conts):
                whole = self.encode(p + c)
                clean = len(whole) > len(ctx) and whole[: len(ctx)] == ctx
                if clean and self.share_queries:
                    shared.setdefault(i, []).append((j, whole[len(ctx) :]))
                    continue
                self.stats.loglik_fallbacks += not clean
                n = len(whole) - _lcp(whole, ctx)
                alone.append((i, j, whole, max(n, 1)))
        hint = [self.encode(h) if h else None for h in (prefixes or [None] * len(prompts))]
        scores: list[list[float | None]] = [[None] * len(c) for c in continuations]
        done: set[int] = set()
        owner: dict[int, int] = {}  # prompt -> the process that runs it (its query, else first)
        for got in self._loglik_shared(shared, ctxs, hint, owner):
            for i, j, lp in got:
                scores[i][j] = lp
            new = {i for i, _, _ in got} - done
            done |= new
            if progress and new:
                progress(len(new))
        seqs = [w for _, _, w, _ in alone]
        need = [n for _, _, _, n in alone]
        hints = [hint[i] for i, _, _, _ in alone]
        batches, owners = self._share(seqs, hints, [n + 1 for n in need])
        for (i, _, _, _), o in zip(alone, owners):
            owner.setdefault(i, o)
        self._count(list(owner.values()))
        for packed, prefixes_, batch in batches:
            suffixes = [seqs[r][len(p) :] for r, p in zip(batch, prefixes_)]
            score = self._score_packed if packed else self._score
            for r, lp in zip(batch, score(prefixes_, suffixes, [need[r] for r in batch])):
                scores[alone[r][0]][alone[r][1]] = lp
            new = {alone[r][0] for r in batch} - done
            done |= new
            if progress and new:
                progress(len(new))
        return scores

    def _loglik_shared(
        self, cands: dict[int, list[tuple[int, list[int]]]], ctxs, hint, owner: dict[int, int]
    ):
        """Score candidates on one run of their prompt: yield ``[(prompt, cand, logprob)]``
        per batch.

        ``cands[i]`` lists prompt i's candidates with their tokens (those after the prompt's
        own encoding). The prompt is the trunk: its last position's logits score every
        candidate's first token, and a candidate's later tokens run as a branch on top of the
        trunk's cache (all but the last token, whose logits are not needed), so single-token
        candidates cost nothing beyond the prompt. ``owner`` gets each prompt's process."""
        items = list(cands)
        seqs = [ctxs[i] for i in items]
        branches = [[t for _, t in cands[i]] for i in items]
        more = [sum(len(t) - 1 for t in br) for br in branches]
        extra = max((len(t) - 1 for br in branches for t in br), default=0)
        hints = [hint[i] for i in items]
        batches, owners = self._share(seqs, hints, [1] * len(seqs), extra, more)
        owner.update(zip(items, owners))
        for packed, prefixes_, batch in batches:
            queries = [seqs[r][len(p) :] for r, p in zip(batch, prefixes_)]
            run = self._score_tree_packed if packed else self._score_tree
            got = run(prefixes_, queries, [branches[r] for r in batch])
            yield [
                (items[r], cands[items[r]][k][0], lp)
                for r, row in zip(batch, got)
                for k, lp in enumerate(row)
            ]

    def _score_tree(self, prefixes, queries, branches) -> list[list[float]]:
        """Shared-query scoring in the padded layout: the queries run batched on their prefix
        caches; the batch cache is then repeated once per multi-token candidate and extended
        by that candidate's tokens (right-padded, after every real token of its row)."""
        ids, mask, pos, cache = self._batch_inputs(prefixes, queries)
        last = self._forward(ids, mask, pos, cache, logits_to_keep=1)[:, -1]
        lp0 = torch.log_softmax(last.float(), dim=-1)
        out = [[float(lp0[r, t[0]]) for t in br] for r, br in enumerate(branches)]
        multi = [(r, k) for r, br in enumerate(branches) for k, t in enumerate(br) if len(t) > 1]
        if not multi:
            return out
        dev = self.device
        M, T = len(multi), max(len(branches[r][k]) - 1 for r, k in multi)
        bids = torch.full((M, T), self.pad_id, dtype=torch.long)
        bmask = torch.zeros((M, T), dtype=torch.long)
        for m, (r, k) in enumerate(multi):
            t = branches[r][k][:-1]
            bids[m, : len(t)] = torch.tensor(t, dtype=torch.long)
            bmask[m, : len(t)] = 1
        sel = torch.tensor([r for r, _ in multi], device=dev)
        cache.batch_select_indices(sel)  # (M, H, slots, d): row r's cache once per candidate
        bmask = torch.cat([mask[sel], bmask.to(dev)], dim=1)
        bpos = pos[sel, -1:] + 1 + torch.arange(T, device=dev)[None]
        logits = self._forward(bids.to(dev), bmask, bpos, cache, logits_to_keep=T)
        lp = torch.log_softmax(logits.float(), dim=-1)  # (M, T, V)
        n_real = sum(len(branches[r][k]) - 1 for r, k in multi)
        self.stats.branch_tokens += n_real
        self.stats.padded_tokens += M * T - n_real
        for m, (r, k) in enumerate(multi):
            t = torch.tensor(branches[r][k][1:], device=dev)
            out[r][k] += float(lp[m, : len(t)].gather(-1, t[:, None]).sum())
        return out

    def _score_tree_packed(self, prefixes, queries, branches) -> list[list[float]]:
        """Shared-query scoring in the packed layout: each row is a tree, its query (trunk)
        followed by its candidates as branches that see the trunk and themselves only; logits
        are kept at the trunk's last token and the branches' tokens."""
        base = max(prefixes, key=len)
        cache = self._packed_cache(base)
        ids: list[int] = []
        pos: list[int] = []
        rows: list[int] = []
        branch: list[int] = []
        at: list[int] = []  # pack positions whose logits are kept
        where: list[list[list[int]]] = []  # per row, per candidate: indices into ``at``
        for r, (p, q, brs) in enumerate(zip(prefixes, queries, branches)):
            n0 = len(p) + len(q)
            ids += q
            pos += range(len(p), n0)
            rows += [r] * len(q)
            branch += [-1] * len(q)
            at.append(len(ids) - 1)
            trunk_end = len(at) - 1
            where.append([])
            for k, t in enumerate(brs):
                inputs = t[:-1]
                start = len(ids)
                ids += inputs
                pos += range(n0, n0 + len(inputs))
                rows += [r] * len(inputs)
                branch += [k] * len(inputs)
                where[r].append([trunk_end, *range(len(at), len(at) + len(inputs))])
                at += range(start, start + len(inputs))
        n_query = sum(len(q) for q in queries)
        self.stats.suffix_tokens += n_query
        self.stats.branch_tokens += len(ids) - n_query
        self.stats.packed_batches += 1
        dev = self.device
        rows_t, branch_t = torch.tensor(rows), torch.tensor(branch)
        lead = torch.full((len(base),), -1, dtype=torch.long)
        plen = torch.tensor([len(p) for p in prefixes])
        mask = self._pack_mask(
            rows_t, torch.cat([lead, rows_t]), plen, branch_t, torch.cat([lead, branch_t])
        )
        x = torch.tensor([ids], device=dev)
        logits = self._forward(
            x, mask, torch.tensor([pos], device=dev), cache, torch.tensor(at, device=dev)
        )
        lp = torch.log_softmax(logits[0].float(), dim=-1)  # (len(at), V)
        out = []
        for r, brs in enumerate(branches):
            row = []
            for k, t in enumerate(brs):
                idx = torch.tensor(where[r][k], device=dev)
                row.append(float(lp[idx].gather(-1, torch.tensor(t, device=dev)[:, None]).sum()))
            out.append(row)
        return out

    def _score(self, prefixes, suffixes, need: list[int]) -> list[float]:
        """Sum of log-probabilities of the last ``need[b]`` tokens of each suffix (batched)."""
        ids, mask, pos, cache = self._batch_inputs(prefixes, suffixes)
        K = max(need) + 1
        logp = torch.log_softmax(self._forward(ids, mask, pos, cache, K).float(), dim=-1)
        out = []
        for b, n in enumerate(need):
            target = ids[b, -n:]
            out.append(float(logp[b, K - n - 1 : K - 1].gather(-1, target[:, None]).sum()))
        return out

    def _score_packed(self, prefixes, suffixes, need: list[int]) -> list[float]:
        """As ``_score``, in the packed layout: logits only at the positions predicting each
        suffix's last ``need[b]`` tokens."""
        cache, ids, pos, rows, slot_row, plen, ends = self._pack_inputs(prefixes, suffixes)
        dev = self.device
        at = torch.cat([torch.arange(e - n, e) for e, n in zip(ends.tolist(), need)])
        mask = self._pack_mask(rows, slot_row, plen)
        logits = self._forward(ids[None].to(dev), mask, pos[None].to(dev), cache, at.to(dev))[0]
        lp = torch.log_softmax(logits.float(), dim=-1)
        lp = lp.gather(-1, ids.to(dev)[at.to(dev) + 1][:, None])[:, 0]
        return [float(x.sum()) for x in lp.split(need)]
