"""Activation patching, exact and by attribution, scored by the answer log-probability gap.

Metric. For a prompt ``x`` and the two answers ``A`` (the clean prompt's) and ``B`` (the
corrupt prompt's), teacher-forced over all answer tokens:

    m(x) = sum_i log p(A_i | x, A_<i) - sum_j log p(B_j | x, B_<j)

Exact patching of a component ``c`` runs the corrupt prompt with ``c``'s activation replaced,
at the chosen positions, by its value on the clean prompt; its effect is normalised as

    effect(c) = (m_patched(c) - m_corrupt) / (m_clean - m_corrupt)

so 0 means "no effect" and 1 means "restores the clean behaviour". Attribution patching
replaces ``m_patched(c) - m_corrupt`` by its first-order Taylor estimate at the corrupt run,

    m_patched(c) - m_corrupt ~= sum_{pos, features of c} (a_clean - a_corrupt) * dm/da |corrupt

from one clean forward, one corrupt forward and one backward pass, for every component at once.

Rows. When both answers are one token, one row (the prompt) is enough: both log-probabilities
are read at its last position. Otherwise there are two rows, ``prompt + A`` and ``prompt + B``
(right-padded), and a patch copies row r of the clean run into row r of the corrupt run, so
the answer positions can be patched too.

Positions: ``query`` (default) patches the query's own tokens and the answer tokens; the shared
prefix (instruction and demonstrations) is identical in both prompts, so its activations are
equal and patching them would change nothing. ``last`` patches the last prompt position only;
``all`` every position.

Speed. Exact patching puts ``batch_size`` patched copies of the corrupt input in one forward
(copy c is patched at component c). With ``reuse=True`` it also skips work that the corrupt
run already did: positions before the first one where the two prompts differ (before it both
runs' activations are equal, so patching them changes nothing) come from the corrupt run's
key/value cache, and blocks below the lowest patched layer of a batch replay the corrupt run's
residual stream instead of computing it (components are sorted by layer, so a batch starts
late in the network when its components sit late). Every patched row computes exactly what an
unbatched forward of that patch computes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from iclft.analysis.capture import keep_in
from iclft.analysis.pairs import PatchPair
from iclft.errors import UnknownNameError
from iclft.models.anatomy import Anatomy, Component, Site, cache_keyword
from iclft.names import PATCH_POSITIONS

Positions = Literal["query", "last", "all"]
POSITIONS = PATCH_POSITIONS
Progress = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# Tokenised pairs


@dataclass(frozen=True)
class TokenPair:
    """A pair in token ids: equally long prompts and the two answers' tokens."""

    id: str
    clean: tuple[int, ...]
    corrupt: tuple[int, ...]
    answers: tuple[tuple[int, ...], tuple[int, ...]]  # (A: clean answer, B: corrupt answer)
    query_start: int  # first token of the query (after the shared prefix)
    pad_id: int = 0

    @property
    def prompt_len(self) -> int:
        return len(self.clean)

    @property
    def n_rows(self) -> int:
        return 1 if all(len(a) == 1 for a in self.answers) else 2

    @property
    def length(self) -> int:
        """Tokens per row."""
        if self.n_rows == 1:
            return self.prompt_len
        return self.prompt_len + max(len(a) for a in self.answers)

    @property
    def logits_needed(self) -> int:
        """How many final positions' logits the metric reads."""
        return self.length - self.prompt_len + 1

    def rows(self, which: Literal["clean", "corrupt"]) -> torch.Tensor:
        """``[n_rows, length]`` input ids for the clean or corrupt prompt."""
        prompt = list(self.clean if which == "clean" else self.corrupt)
        if self.n_rows == 1:
            return torch.tensor([prompt])
        out = torch.full((2, self.length), self.pad_id, dtype=torch.long)
        for r, ans in enumerate(self.answers):
            seq = prompt + list(ans)
            out[r, : len(seq)] = torch.tensor(seq)
        return out

    @property
    def first_diff(self) -> int:
        """The first position where the clean and corrupt prompts differ: the activations of
        every earlier position are equal in both runs (causal attention)."""
        return next(i for i, (a, b) in enumerate(zip(self.clean, self.corrupt)) if a != b)

    def positions(self, which: str) -> list[int]:
        if which == "query":
            return list(range(self.query_start, self.length))
        if which == "last":
            return [self.prompt_len - 1]
        if which == "all":
            return list(range(self.length))
        raise UnknownNameError("positions", which, POSITIONS)

    def metric(self, logits: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """``m`` for each of ``copies`` row blocks. ``logits``: ``[copies * n_rows, K, vocab]``
        for the last ``K >= logits_needed`` positions, rows ordered ``r * copies + c``."""
        K = logits.shape[1]
        first = K - self.logits_needed  # index of position prompt_len - 1
        logp = torch.log_softmax(logits.float(), dim=-1)
        if self.n_rows == 1:
            (a,), (b,) = self.answers
            at = logp[:, first]
            return at[:, a] - at[:, b]
        total = []
        for r, ans in enumerate(self.answers):
            block = logp[r * copies : (r + 1) * copies]
            idx = torch.arange(len(ans)) + first
            tok = torch.tensor(ans)
            total.append(block[:, idx, tok].sum(-1))
        return total[0] - total[1]


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_pair(tokenizer: Any, pair: PatchPair) -> TokenPair | None:
    """Tokenise a pair; ``None`` when the two prompts differ in token count.

    Answers are tokenised as the continuation ``" " + answer`` appended to the prompt's tokens
    (the prompts end with the answer lead, which a space separates from the answer)."""
    clean = _encode(tokenizer, pair.clean_prompt, True)
    corrupt = _encode(tokenizer, pair.corrupt_prompt, True)
    if len(clean) != len(corrupt):
        return None
    prefix = _encode(tokenizer, pair.prefix, True)
    start = 0
    while start < min(len(prefix), len(clean)) and prefix[start] == clean[start] == corrupt[start]:
        start += 1
    start = min(start, len(clean) - 1)
    answers = (
        tuple(_encode(tokenizer, " " + pair.clean_answer, False)),
        tuple(_encode(tokenizer, " " + pair.corrupt_answer, False)),
    )
    if answers[0] == answers[1] or not all(answers):
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenPair(pair.id, tuple(clean), tuple(corrupt), answers, start, int(pad))


def tokenizes_alike(tokenizer: Any) -> Callable[[PatchPair], bool]:
    """A ``same_length`` check for :func:`iclft.analysis.pairs.make_pairs`."""
    return lambda pair: encode_pair(tokenizer, pair) is not None


# ---------------------------------------------------------------------------------------------
# Results


class _Effects:
    """``raw`` and ``gap`` of an effects record with ``clean``, ``corrupt`` and ``patched``
    (a plain mixin: the dataclasses below declare the fields)."""

    clean: float
    corrupt: float
    patched: np.ndarray

    @property
    def raw(self) -> np.ndarray:
        """``m_patched - m_corrupt`` per component (and position)."""
        return self.patched - self.corrupt

    @property
    def gap(self) -> float:
        """``m_clean - m_corrupt``."""
        return self.clean - self.corrupt


@dataclass(frozen=True)
class PairEffects(_Effects):
    """One pair's metric on the clean, corrupt and each patched run."""

    pair_id: str
    components: tuple[str, ...]
    clean: float
    corrupt: float
    patched: np.ndarray  # [n_components]: m with that component patched (or its estimate)

    @property
    def normalised(self) -> np.ndarray:
        """``(m_patched - m_corrupt) / (m_clean - m_corrupt)`` per component."""
        return self.raw / self.gap


# ---------------------------------------------------------------------------------------------
# Forward passes


def _device(anatomy: Anatomy) -> torch.device:
    return next(anatomy.model.parameters()).device


def _logits(anatomy: Anatomy, ids: torch.Tensor, keep: int, past: Any = None, start: int = 0):
    dev = _device(anatomy)
    kwargs: dict[str, Any] = {"input_ids": ids.to(dev), "logits_to_keep": keep}
    if past is not None:
        pos = torch.arange(start, start + ids.shape[1], device=dev)[None]
        kwargs.update({cache_keyword(anatomy.model): past}, use_cache=True, position_ids=pos)
    else:
        kwargs["use_cache"] = False
    return anatomy.model(**kwargs).logits


@dataclass
class _Runs:
    """What the clean and corrupt runs of a pair leave for the patched runs."""

    pair: TokenPair
    positions: list[int]
    clean_acts: dict[Site, torch.Tensor]  # [n_rows, length, features]
    clean: float
    corrupt: float
    start: int = 0  # first position computed by patched runs
    cache: Any = None  # corrupt key/value cache of positions < start
    resid: dict[int, torch.Tensor] | None = None  # corrupt residual stream, positions >= start


@torch.no_grad()
def _prepare(
    anatomy: Anatomy, pair: TokenPair, sites: set[Site], positions: list[int], reuse: bool
) -> _Runs:
    keep = pair.logits_needed
    clean_acts: dict[Site, torch.Tensor] = {}
    with anatomy.hooks({s: keep_in(clean_acts, s) for s in sites}):
        clean = float(pair.metric(_logits(anatomy, pair.rows("clean"), keep))[0])
    ids = pair.rows("corrupt")
    if not reuse:
        corrupt = float(pair.metric(_logits(anatomy, ids, keep))[0])
        return _Runs(pair, positions, clean_acts, clean, corrupt)
    # positions before the first differing token hold equal activations in both runs: their
    # patch is a no-op, so they come from the corrupt cache with everything else before them
    start = max(min(positions), min(pair.first_diff, max(positions)))
    positions = [p for p in positions if p >= start]
    cache = None
    if start > 0:
        from transformers import DynamicCache

        cache = DynamicCache(config=anatomy.model.config)
        _logits(anatomy, ids[:, :start], 1, past=cache, start=0)
    resid: dict[int, torch.Tensor] = {}
    edits = {Site(layer, "resid"): keep_in(resid, layer) for layer in range(anatomy.n_layers)}
    with anatomy.hooks(edits):
        past = copy.deepcopy(cache) if cache is not None else None
        logits = _logits(anatomy, ids[:, start:], keep, past=past, start=start)
    corrupt = float(pair.metric(logits)[0])
    return _Runs(pair, positions, clean_acts, clean, corrupt, start, cache, resid)


@torch.no_grad()
def _advance(anatomy: Anatomy, runs: _Runs, grow: Any) -> _Runs:
    """``runs`` (prepared with reuse) moved one position on: the corrupt run's next position
    is appended to the cache ``grow`` (mutated), the replayed residual streams start there."""
    from transformers import DynamicCache

    p = runs.start
    if grow is None:
        grow = DynamicCache(config=anatomy.model.config)
    _logits(anatomy, runs.pair.rows("corrupt")[:, p : p + 1], 1, past=grow, start=p)
    resid = {layer: r[:, 1:] for layer, r in (runs.resid or {}).items()}
    return replace(runs, start=p + 1, cache=grow, resid=resid, positions=[p + 1])


@torch.no_grad()
def _patched(
    anatomy: Anatomy,
    runs: _Runs,
    groups: Sequence[Sequence[Component]],
    at: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """The metric with each group of components patched together, one row block per group,
    all in one forward; group g at positions ``at[g]`` (default: the runs' positions)."""
    pair, C, R = runs.pair, len(groups), runs.pair.n_rows
    start = runs.start
    by_site: dict[Site, list[tuple[int, slice, torch.Tensor]]] = {}
    for c, group in enumerate(groups):
        pos_abs = torch.tensor(runs.positions if at is None else list(at[c]))
        if at is not None and int(pos_abs.min()) < start:
            raise ValueError("a patched position lies in the reused corrupt cache")
        for comp in group:
            by_site.setdefault(comp.site, []).append((c, anatomy.features(comp), pos_abs))

    def edit(site: Site):
        clean = runs.clean_acts[site].to(_device(anatomy))

        def fn(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            for c, feat, pos_abs in by_site[site]:
                for r in range(R):
                    x[r * C + c, pos_abs - start, feat] = clean[r, pos_abs, feat]
            return x

        return fn

    ids = pair.rows("corrupt")[:, start:].repeat_interleave(C, dim=0)
    past, replay = None, {}
    if runs.resid is not None:
        lowest = min((comp.layer for g in groups for comp in g), default=anatomy.n_layers)
        replay = {layer: runs.resid[layer].repeat_interleave(C, dim=0) for layer in range(lowest)}
        if runs.cache is not None:
            past = copy.deepcopy(runs.cache)
            past.batch_repeat_interleave(C)
    with anatomy.hooks({s: edit(s) for s in by_site}), anatomy.replay(replay):
        logits = _logits(anatomy, ids, pair.logits_needed, past=past, start=start)
    return pair.metric(logits, copies=C).cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Public functions


def _components(anatomy: Anatomy, components: Sequence[Component] | None) -> list[Component]:
    comps = anatomy.components() if components is None else list(components)
    return [anatomy.check(c) for c in comps]


def patched_metric(
    anatomy: Anatomy,
    pair: TokenPair,
    components: Sequence[Component],
    *,
    positions: Positions = "query",
) -> tuple[float, float, float]:
    """``(m_clean, m_corrupt, m_patched)`` with all ``components`` patched at once (an empty
    list patches nothing; a circuit's components together measure its faithfulness)."""
    comps = _components(anatomy, components)
    runs = _prepare(anatomy, pair, {c.site for c in comps}, pair.positions(positions), False)
    return runs.clean, runs.corrupt, float(_patched(anatomy, runs, [comps])[0])


def exact_patching(
    anatomy: Anatomy,
    pair: TokenPair,
    components: Sequence[Component] | None = None,
    *,
    positions: Positions = "query",
    batch_size: int = 32,
    reuse: bool = True,
    progress: Progress | None = None,
) -> PairEffects:
    """Patch each component alone (default: every head, MLP and residual stream), ``batch_size``
    patches per forward. ``batch_size=1, reuse=False`` is the plain one-forward-per-patch loop."""
    comps = _components(anatomy, components)
    runs = _prepare(anatomy, pair, {c.site for c in comps}, pair.positions(positions), reuse)
    order = sorted(range(len(comps)), key=lambda i: (comps[i].layer, i))
    patched = np.empty(len(comps))
    step = max(1, int(batch_size))
    for i in range(0, len(order), step):
        chunk = order[i : i + step]
        patched[chunk] = _patched(anatomy, runs, [[comps[j]] for j in chunk])
        if progress:
            progress(len(chunk))
    return PairEffects(pair.id, tuple(c.name for c in comps), runs.clean, runs.corrupt, patched)


@dataclass(frozen=True)
class PositionEffects(_Effects):
    """One pair's metric with each component patched at one position at a time."""

    pair_id: str
    components: tuple[str, ...]
    positions: tuple[int, ...]  # absolute positions, from the first differing token
    prompt_len: int
    clean: float
    corrupt: float
    patched: np.ndarray  # [n_components, n_positions]

    @property
    def offsets(self) -> tuple[int, ...]:
        """Positions relative to the last prompt token (0; answer tokens are 1, 2, ...)."""
        return tuple(p - (self.prompt_len - 1) for p in self.positions)


def exact_patching_per_position(
    anatomy: Anatomy,
    pair: TokenPair,
    components: Sequence[Component] | None = None,
    *,
    batch_size: int = 32,
    reuse: bool = True,
    progress: Progress | None = None,
) -> PositionEffects:
    """Patch each component alone at each position alone (component x position), from the first
    differing token to the last (earlier positions carry equal activations in both runs, so
    their effect is 0), ``batch_size`` patches per forward. Where the whole-query patch of a
    residual stream restores the clean run by definition, this shows where its effect sits."""
    comps = _components(anatomy, components)
    positions = list(range(pair.first_diff, pair.length))
    runs = _prepare(anatomy, pair, {c.site for c in comps}, positions, reuse)
    order = sorted(range(len(comps)), key=lambda i: (comps[i].layer, i))
    patched = np.empty((len(comps), len(positions)))  # [components, positions]
    step = max(1, int(batch_size))
    at, grow = runs, copy.deepcopy(runs.cache)
    for j, p in enumerate(positions):
        # a patch at p changes nothing before p: with reuse, the patched runs start at p (at
        # most at the last prompt position, whose logits the metric reads)
        if reuse and j and p <= pair.prompt_len - 1:
            at = _advance(anatomy, at, grow)
            grow = at.cache
        for k in range(0, len(order), step):
            chunk = order[k : k + step]
            out = _patched(anatomy, at, [[comps[i]] for i in chunk], [[p]] * len(chunk))
            patched[chunk, j] = out
            if progress:
                progress(len(chunk))
    return PositionEffects(
        pair.id,
        tuple(c.name for c in comps),
        tuple(positions),
        pair.prompt_len,
        runs.clean,
        runs.corrupt,
        patched,
    )


def attribution_patching(
    anatomy: Anatomy,
    pair: TokenPair,
    components: Sequence[Component] | None = None,
    *,
    positions: Positions = "query",
) -> PairEffects:
    """First-order estimate of every component's patching effect from one clean forward, one
    corrupt forward and one backward pass (see module doc)."""
    comps = _components(anatomy, components)
    sites = sorted({c.site for c in comps})
    pos = torch.tensor(pair.positions(positions))
    keep = pair.logits_needed
    with torch.no_grad():
        clean_acts: dict[Site, torch.Tensor] = {}
        with anatomy.hooks({s: keep_in(clean_acts, s) for s in sites}):
            clean = float(pair.metric(_logits(anatomy, pair.rows("clean"), keep))[0])
    acts: dict[Site, torch.Tensor] = {}
    embed = anatomy.embedding()
    handle = embed.register_forward_hook(
        lambda m, a, out: out if out.requires_grad else out.detach().requires_grad_(True)
    )
    try:
        with torch.enable_grad(), anatomy.hooks({s: keep_in(acts, s, detach=False) for s in sites}):
            m = pair.metric(_logits(anatomy, pair.rows("corrupt"), keep))[0]
            grads = torch.autograd.grad(m, [acts[s] for s in sites])
    finally:
        handle.remove()
    corrupt = float(m.detach())
    # (a_clean - a_corrupt) * grad, summed over rows and chosen positions: [features] per site
    contrib = {
        s: ((clean_acts[s] - acts[s].detach()) * g)[:, pos].sum(dim=(0, 1))
        for s, g in zip(sites, grads)
    }
    est = np.array(
        [float(contrib[c.site][anatomy.features(c)].sum()) for c in comps], dtype=np.float64
    )
    return PairEffects(pair.id, tuple(c.name for c in comps), clean, corrupt, corrupt + est)


#: patching estimator (:data:`iclft.names.ESTIMATORS`) -> its function
ESTIMATE: dict[str, Callable[..., PairEffects]] = {
    "exact": exact_patching,
    "attribution": attribution_patching,
}
