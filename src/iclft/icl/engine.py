"""The batched scoring engine: greedy generation and log-likelihood with prefix caching.

Why hand-written: ``model.generate`` re-encodes every prompt from scratch. k-shot prompts of a
sweep share long prefixes (the instruction and the demonstrations), so the engine

1. tokenises each full prompt exactly as plain ``generate`` would (no segment-wise
   tokenisation, so the model sees the same tokens);
2. finds the longest token prefix it shares with its prefix hint (the instruction plus
   demonstrations) and computes the key/value cache of that prefix once (:mod:`iclft.icl.kv`),
   in fixed blocks of ``PREFIX_BLOCK`` tokens that longer prefixes reuse (shot counts nest:
   the 16-shot prefix extends the 8-shot one's whole blocks), so a cache never depends on what
   ran before it;
3. runs the remaining suffixes on top of the caches, in one of two layouts, planned by
   :mod:`iclft.icl.batching`:

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
4. for log-likelihoods (:mod:`iclft.icl.likelihood`), runs each prompt once with its
   candidates on top: the prompt's last logits score every candidate's first token, and a
   candidate's further tokens run as a branch (packed: the candidates of a prompt laid after
   it, a tree mask letting each see the prompt and itself only; padded: the batch cache
   repeated per candidate and extended by its tokens). A candidate whose encoding merges with
   the prompt's last token is run on its own whole sequence instead, so the tokens scored are
   always those of ``encode(prompt + candidate)``;
5. decodes greedily (:mod:`iclft.icl.decode`, which also holds the stop rules), one token
   per step for every live prompt, dropping prompts as they finish.

The maths of every forward pass is the model's own; only the bookkeeping is ours. This module
holds the :class:`Engine` that ties the pieces together: tokenisation, the response cache, the
out-of-memory retry of ``batch_size="auto"`` and the split of a call between processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from iclft.icl import batching, decode, likelihood
from iclft.icl.batching import Caps, lcp
from iclft.icl.kv import KV
from iclft.icl.settings import BATCH_SIZE, MAX_NEW_TOKENS
from iclft.models.anatomy import known_family, packable_families

Progress = Callable[[int], None]

#: the first batch size ``batch_size="auto"`` tries (lm-evaluation-harness's default maximum)
AUTO_BATCH = 64


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
        # "auto": start at AUTO_BATCH rows and halve on out-of-memory (lm-evaluation-harness's
        # --batch_size auto); the size that worked is kept for later calls
        self.auto_batch = batch_size == "auto"
        self.batch_size = AUTO_BATCH if self.auto_batch else max(1, int(batch_size))
        self.max_batch_tokens = max_batch_tokens
        self.max_new_tokens = max_new_tokens
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.kv = KV(model, pad_id, max_cached_prefixes)
        self.stats = self.kv.stats
        self.device = self.kv.device
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
        self._encoded: dict[str, list[int]] = {}

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
        self.kv.clear()

    # ----- planning, and sharing a plan between processes -------------------------------
    def _caps(self) -> Caps:
        return Caps(self.batch_size, self.max_batch_tokens, self.max_pack_tokens)

    def _plan(self, seqs, hints, keep, extra: int = 0, more=None):
        """:func:`~iclft.icl.batching.plan` with this engine's caps and layout."""
        return batching.plan(
            seqs, hints, keep, self._caps(), pack=self.pack, window=self.window,
            extra=extra, more=more,
        )  # fmt: skip

    def _share(
        self,
        seqs: Sequence[Sequence[int]],
        hints: Sequence[Sequence[int] | None],
        keep: Sequence[int],
        extra: int = 0,
        more: Sequence[int] | None = None,
    ) -> tuple[list, list[int]]:
        """``(batches this process runs, owner rank of each item)`` of one plan.

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
        owners = self.shard.assign(
            [batching.cost(b, pre, seqs, more_, extra) for _, pre, b in plan0]
        )
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
        ``stop``: "newline" (after the answer began), "none" or "budget" (see
        :data:`iclft.icl.decode.STOPS`).

        ``prefixes[i]`` is a hint: text that prompt i starts with and that other prompts share.
        Returns the decoded continuations (including the newline that stopped them)."""
        if stop not in decode.STOPS:
            raise ValueError(f"stop must be one of {decode.STOPS}, got {stop!r}")
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
        rule = decode.StopRule(self.tok, self.eos_ids, max_new, stop)
        batches, owners = self._share(seqs, hints, [1] * len(seqs), max_new)
        self._count(owners)
        for packed, prefixes_, batch in batches:
            suffixes = [seqs[i][len(p) :] for i, p in zip(batch, prefixes_)]
            run = decode.greedy_packed if packed else decode.greedy
            for i, t in zip(batch, run(self.kv, rule, prefixes_, suffixes)):
                outs[i] = t
            if progress:
                progress(len(batch))
        return outs

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
                n = len(whole) - lcp(whole, ctx)
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
            score = likelihood.score_packed if packed else likelihood.score
            for r, lp in zip(batch, score(self.kv, prefixes_, suffixes, [need[r] for r in batch])):
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
            run = likelihood.score_tree_packed if packed else likelihood.score_tree
            got = run(self.kv, prefixes_, queries, [branches[r] for r in batch])
            yield [
                (items[r], cands[items[r]][k][0], lp)
                for r, row in zip(batch, got)
                for k, lp in enumerate(row)
            ]
