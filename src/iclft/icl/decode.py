"""Greedy decoding on cached prefixes, and the rule that ends a continuation.

One token per step for every live row, dropping rows as they finish: an end-of-sequence token,
or (``stop="newline"``, the default) a newline *after the answer has started* (leading
whitespace and newlines are skipped, so a model that answers on the next line is read, not
scored empty); ``stop="none"`` runs to ``max_new_tokens``; ``stop="budget"`` runs to
``max_new_tokens`` counted from the answer: a first token that is a lone space is not counted
(the seed paper's fixed-length continuation: its prompts ended with the space that ours leave
to the answer, see :data:`iclft.icl.scoring.PAPER_NEW_TOKENS`).

:func:`greedy` decodes a padded batch, :func:`greedy_packed` a pack (see :mod:`iclft.icl.kv`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StoppingCriteria

from iclft.icl.kv import KV

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


@dataclass(frozen=True)
class StopRule:
    """When a continuation ends: ``eos_ids``, ``max_new`` tokens, or ``stop`` (:data:`STOPS`)."""

    tok: object
    eos_ids: set[int]
    max_new: int
    stop: str

    @property
    def steps(self) -> int:
        return decode_steps(self.max_new, self.stop)

    def advance(self, logits, active: list[int], gen, texts) -> tuple[list[int], torch.Tensor]:
        """One greedy step: append each live row's argmax token; return the positions (in
        ``active``) of rows still going and the tokens just chosen."""
        nxt = logits.argmax(-1)
        keep = []
        for r, (row, t) in enumerate(zip(active, nxt.tolist())):
            if t in self.eos_ids:
                continue
            gen[row].append(t)
            texts[row] = self.tok.decode(gen[row], skip_special_tokens=False)
            first = self.tok.decode(gen[row][:1]) if self.stop == "budget" else ""
            spent = counted_tokens(first, len(gen[row]), self.stop) >= self.max_new
            if not (spent or finished(texts[row], self.stop)):
                keep.append(r)
        return keep, nxt


def greedy(kv: KV, rule: StopRule, prefixes, suffixes) -> list[str]:
    """Greedy continuations of a padded batch: row r is ``suffixes[r]`` on ``prefixes[r]``."""
    ids, mask, pos, cache = kv.batch_inputs(prefixes, suffixes)
    logits = kv.forward(ids, mask, pos, cache, logits_to_keep=1)[:, -1]
    B = len(suffixes)
    gen: list[list[int]] = [[] for _ in range(B)]
    texts = [""] * B
    active = list(range(B))  # original row of each live row
    last_pos = pos[:, -1]
    steps = rule.steps
    for step in range(steps):
        keep, nxt = rule.advance(logits, active, gen, texts)
        if not keep or step == steps - 1:
            break
        if len(keep) < len(active):
            sel = torch.tensor(keep, device=kv.device)
            cache.batch_select_indices(sel)
            mask, nxt, last_pos = mask[sel], nxt[sel], last_pos[sel]
            active = [active[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last_pos = last_pos + 1
        kv.stats.decode_steps += 1
        logits = kv.forward(nxt[:, None], mask, last_pos[:, None], cache, 1)[:, -1]
    return texts


def greedy_packed(kv: KV, rule: StopRule, prefixes, suffixes) -> list[str]:
    """Greedy decoding in the packed layout: each step appends one token per live row to
    the single packed sequence; finished rows simply stop adding (their slots stay,
    masked from everyone else)."""
    cache, ids, pos, rows, slot_row, plen, ends = kv.pack_inputs(prefixes, suffixes)
    dev = kv.device
    mask = kv.pack_mask(rows, slot_row, plen)
    logits = kv.forward(ids[None].to(dev), mask, pos[None].to(dev), cache, ends.to(dev))[0]
    B = len(suffixes)
    gen: list[list[int]] = [[] for _ in range(B)]
    texts = [""] * B
    active = list(range(B))
    last_pos = pos[ends]
    steps = rule.steps
    for step in range(steps):
        keep, nxt = rule.advance(logits, active, gen, texts)
        if not keep or step == steps - 1:
            break
        active = [active[r] for r in keep]
        live = torch.tensor(active)
        nxt, last_pos = nxt[keep], last_pos[keep] + 1
        slot_row = torch.cat([slot_row, live])
        mask = kv.pack_mask(live, slot_row, plen)
        kv.stats.decode_steps += 1
        logits = kv.forward(nxt[None], mask, last_pos[None].to(dev), cache, 0)[0]
    return texts
