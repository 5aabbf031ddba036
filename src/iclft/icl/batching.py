"""Planning: which prompts run together, on which cached prefix, in which layout.

A pure function of the token sequences and the caps (:class:`Caps`), so every process of a
sharded run makes the same plan (see ``Engine._share``). :func:`plan` gives each item its
reusable prefix (the longest token prefix it shares with its hint, leaving ``keep[i]`` tokens
to run), orders items by prefix, and cuts them into batches: packed groups where prefixes nest
(:func:`chains`, :func:`cut_packed`), padded batches elsewhere (:func:`cut`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

Prefix = tuple[int, ...]
#: one planned batch: ``(packed, prefix of each item, item indices)``
Batch = tuple[bool, list[Prefix], list[int]]


class Caps(NamedTuple):
    """How big a batch may be: rows, rows x suffix length (padded), suffix tokens (packed)."""

    batch_size: int
    max_batch_tokens: int
    max_pack_tokens: int


def lcp(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan(
    seqs: Sequence[Sequence[int]],
    hints: Sequence[Sequence[int] | None],
    keep: Sequence[int],
    caps: Caps,
    *,
    pack: bool,
    window: int | None,
    extra: int = 0,
    more: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Assign each item its reusable prefix; yield ``(packed, prefixes, [item indices])``.

    ``keep[i]`` is how many trailing tokens of item i must stay in the suffix (at least 1,
    the position whose logits are needed); ``extra`` is how many tokens may be generated
    (or run on top of an item); ``more[i]`` counts tokens item i adds to its batch besides
    its suffix (its candidates' branches), for the batch size caps.
    Items are ordered by prefix (lexicographically, so a prefix comes right before the
    prefixes that extend it: nested shot counts build on each other's caches). Items whose
    prefixes nest with at least one other item's go to packed groups when ``pack``; the rest
    are cut into padded batches. Models with a sliding ``window`` batch only identical
    prefixes and, when the window can be reached, identical suffix lengths (padding counts
    against the window)."""
    more = more or [0] * len(seqs)
    pref = []
    for i, (s, h) in enumerate(zip(seqs, hints)):
        n = max(min(lcp(s, h), len(s) - keep[i]), 0) if h else 0
        pref.append(tuple(s[:n]))
    if window is None:
        order = sorted(range(len(seqs)), key=lambda i: (pref[i], len(seqs[i])))
        if not pack:
            yield from ((False, p, b) for p, b in cut(order, pref, seqs, more, caps))
            return
        loose: list[int] = []
        for chain in chains(order, pref):
            if len(chain) > 1:
                yield from ((True, p, b) for p, b in cut_packed(chain, pref, seqs, more, caps))
            else:
                loose += chain
        yield from ((False, p, b) for p, b in cut(loose, pref, seqs, more, caps))
        return
    groups: dict[tuple[Prefix, int], list[int]] = {}
    for i, s in enumerate(seqs):
        exact = len(s) + extra >= window
        groups.setdefault((pref[i], len(s) - len(pref[i]) if exact else -1), []).append(i)
    for key in sorted(groups, key=lambda k: (len(k[0]), k[1])):
        order = sorted(groups[key], key=lambda i: len(seqs[i]))
        yield from ((False, p, b) for p, b in cut(order, pref, seqs, more, caps))


def chains(order: list[int], pref):
    """Split prefix-sorted items into runs whose (non-empty) prefixes all nest: each is a
    token prefix of the run's longest. Items without a prefix are runs of their own."""
    chain: list[int] = []
    base: Prefix = ()
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


def cut_packed(order: list[int], pref, seqs, more, caps: Caps):
    """Packs of at most ``batch_size`` rows and ``max_pack_tokens`` suffix tokens."""
    batch: list[int] = []
    tokens = 0
    for i in order:
        slen = len(seqs[i]) - len(pref[i]) + more[i]
        if batch and (len(batch) >= caps.batch_size or tokens + slen > caps.max_pack_tokens):
            yield [pref[j] for j in batch], batch
            batch, tokens = [], 0
        batch.append(i)
        tokens += slen
    if batch:
        yield [pref[j] for j in batch], batch


def cut(order: list[int], pref, seqs, more, caps: Caps):
    """Batches of at most ``batch_size`` rows and ``max_batch_tokens`` rows x suffix
    length (the cache, rows x prefix length, is capped at 4x that)."""
    batch: list[int] = []
    longest = widest = 0
    for i in order:
        slen, plen = len(seqs[i]) - len(pref[i]) + more[i], len(pref[i])
        n = len(batch) + 1
        if batch and (
            n > caps.batch_size
            or n * max(longest, slen) > caps.max_batch_tokens
            or n * max(widest, plen) > 4 * caps.max_batch_tokens
        ):
            yield [pref[j] for j in batch], batch
            batch, longest, widest = [], 0, 0
        batch.append(i)
        longest, widest = max(longest, slen), max(widest, plen)
    if batch:
        yield [pref[j] for j in batch], batch


def cost(batch, prefixes, seqs, more, extra: int) -> float:
    """A batch's work, to balance processes: the tokens it runs on top of its prefixes
    (suffixes, candidates, generated tokens), each weighted by the context it attends to
    (a token's matmuls cost the same everywhere; its attention grows with the context).
    The prefixes themselves are cached and not counted."""
    return sum(
        (len(seqs[i]) - len(p) + more[i] + extra) * (1 + len(p) / 2048)
        for i, p in zip(batch, prefixes)
    )
