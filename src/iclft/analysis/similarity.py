"""ICL vs gradient descent: how ICL-like is an update (Dai et al., 2023; Deutch et al., 2024).

Three settings on the same clean test queries (docs/science.md):

* ``zsl``: the base model, instruction + query;
* ``icl``: the base model, instruction + the k shared demonstrations of the seed + query;
* FT: the base model after plain SGD on exactly those k demonstrations (batch 1, one epoch in
  prompt order, loss on all tokens, K/V projections only, no clipping, fp32 master weights:
  :func:`iclft.finetune.gd.sgd_on_demonstrations`), given instruction + query. Two FT updates,
  ``gd`` (vanilla) and ``lcgd`` (layer-causal, same learning rate), each with its own random
  control (below).

At the last prompt position we record, in every layer l, the attention output h (the output
projection's output, before the residual add) and every head's pre-softmax scores m to the key
positions of the *query's own tokens* (the reference's ``attn_map[:, :, -1, c_len:]``: no BOS,
no instruction, no demonstrations), the same tokens in every setting. With
cos(a, b) = a·b / (‖a‖ ‖b‖) (0 when either vector is 0):

    SimAOU^l      = mean_q cos(h_ICL − h_ZSL, h_FT − h_ZSL)
    SimAOU_norm^l = SimAOU^l with every h replaced by h / ‖h‖     (what Dai et al.'s code did)
    SimAM^l       = mean_q mean_head cos(m_ICL, m_FT)
    ZSL SimAM^l   = mean_q mean_head cos(m_ICL, m_ZSL)             (SimAM of "no update at all")
    SimAM_Δ^l     = mean_q mean_head cos(m_ICL − m_ZSL, m_FT − m_ZSL)
    Rec2FTP       = |(C_ICL ∩ C_FT) \\ C_ZSL| / |C_FT \\ C_ZSL|

Each per-layer metric's single number is its mean over layers (= the mean over queries of each
query's mean over layers, which the 95% bootstrap interval resamples); SimAM and SimAM_Δ average
layers 1.. on rotary models (:func:`simam_layers`: ICL cannot change layer 0's scores to the
query's own tokens there), which similarity.json records as ``simam_layers``. The key boundary
is the reference's (``--keys reference``): the first token holding a character of the query,
so the separator before it is context (:func:`key_positions`). C_s is the set of queries
that setting s answers right, judged by the evaluator's scorers (:mod:`iclft.icl.scoring`): the
task's parser and exact match on greedy generation, or the choice with the highest
log-likelihood for choice tasks. SimAOU_norm has a floor: with pure-noise
updates of norm √3·‖h_ZSL‖ it is 1/4, not 0 (a test checks this), so report it beside SimAOU.

Controls (docs/science.md):

* ``random_gd`` / ``random_lcgd``: the base model with every parameter tensor θ that the update
  moved set to θ + ‖Δθ‖ · ε/‖ε‖, ε ~ N(0, I) restricted to the entries the update moved; drawn
  ``random_draws`` times (seeded), norm-matched to GD and to layer-causal GD separately. Reported:
  the mean over draws (interval over queries) and the spread (sd, min, max) over draws.
* ``dai_uniform``: Dai et al.'s baseline as their code computed it, cos(h_ICL − h_ZSL, u) with u
  uniform on [0, 1)^D (SimAOU and SimAOU_norm only).
* ``untrained``: every metric again on a randomly initialised model of the same architecture
  (seeded), Deutch et al.'s control: ICL-GD similarity that an untrained model reaches too says
  little about the trained one.
* ``f2t``: Dai et al.'s subset, the queries ZSL gets wrong and both ICL and the update get right.

Where this differs from the reference: h and m are read at the last prompt token (the position
that predicts the answer); Dai et al.'s code reads them at the first candidate label token
appended to the prompt, so its keys end with that label token.

Kendall τ (optional in docs/science.md) is not computed.

The metrics and their intervals are in :mod:`iclft.analysis.similarity_metrics`, the random
update and the untrained model in :mod:`iclft.analysis.similarity_updates`; this module reads
the prompts' key positions, records each setting and runs the pipeline.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from iclft.analysis.settings import SimilaritySpec
from iclft.analysis.similarity_metrics import (
    EPS,
    Recordings,
    accuracy_stat,
    dai_uniform,
    json_number,
    json_numbers,
    per_query,
    random_stat_of,
    rec2ftp_stat,
    stat_of,
    zsl_simam,
)
from iclft.analysis.similarity_table import (
    KEY_SETS,
    LAYER_METRICS,
    MODELS,
    RANDOM,
    SIMAM_METRICS,
    UPDATES,
)
from iclft.analysis.similarity_updates import random_update, seed_of, untrained_model, update_norms
from iclft.errors import UnknownNameError, UserError
from iclft.icl.scoring import Score
from iclft.icl.settings import MAX_NEW_TOKENS
from iclft.records import SimilarityResult

Track = Callable[[str, int], Callable[[int], None]]
"""``track(description, total)`` returns an ``advance(n)`` callback (a progress bar)."""


def _no_track(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


# ----------------------------------------------------------------------------------------------
# Prompts and key positions


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids exactly as the engine feeds them."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def query_start(tokenizer: Any, text: str, prefix: str) -> int:
    """Index of the first token of the query part of ``text`` (= ``prefix`` + query) with the
    separator before it: where the full text's tokens stop agreeing with the prefix's own
    tokens (``SEP`` tokenised alone can differ from ``SEP`` followed by the query, so the
    separator's tokens can fall after that point; a token merged across it counts as query)."""
    return _lcp(_encode(tokenizer, text), _encode(tokenizer, prefix))


def reference_start(tokenizer: Any, text: str, prefix: str) -> int:
    """Index of the first token that holds a character of the query ``text[len(prefix):]``
    (by the tokenizer's character offsets): the reference's ``c_len``, which puts every token
    before the query's own, its separator included, in the context. A token merged across
    the boundary holds query characters, so it counts as query."""
    try:
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        raise UserError(
            "SimAM's reference key boundary (--keys reference) needs a tokenizer that reports "
            "character offsets (a fast tokenizer); use --keys query+separator with this one"
        ) from None
    cut = len(prefix)
    for j, (start, end) in enumerate(enc["offset_mapping"]):
        if end > cut and end > start:  # special tokens have no characters
            return j
    return len(enc["offset_mapping"])


def key_positions(
    tokenizer: Any,
    zsl_text: str,
    zsl_prefix: str,
    icl_text: str,
    icl_prefix: str,
    keys: str = "reference",
) -> tuple[list[int], list[int]] | None:
    """SimAM's key positions in the ZSL and the ICL prompt, holding the same tokens in both;
    ``None`` when those tokens (with the separator and the instruction) differ between the
    prompts.

    ``reference``: the query's own tokens (the reference's ``attn_map[:, :, -1, c_len:]``: no
    BOS, no instruction, no demonstrations, no separator; :func:`reference_start`).
    ``query+separator``: the same with the separator tokens before the query that the prefix
    alone tokenises otherwise (:func:`query_start`; iclft's earlier boundary: two ``\\n`` on
    SmolLM2). ``instruction+query``: every ZSL token (BOS and instruction too) and the same
    tokens in the ICL prompt, demonstrations dropped (with rotary positions ICL moves the
    instruction's scores merely by moving the query further away)."""
    if keys not in KEY_SETS:
        raise UnknownNameError("SimAM key set", keys, KEY_SETS)
    z, i = _encode(tokenizer, zsl_text), _encode(tokenizer, icl_text)
    a = query_start(tokenizer, zsl_text, zsl_prefix)  # instruction tokens: z[:a]
    b = query_start(tokenizer, icl_text, icl_prefix)  # separator and query tokens: i[b:]
    if b < a or a >= len(z) or z[a:] != i[b:] or z[:a] != i[:a]:
        return None
    if keys == "query+separator":
        return list(range(a, len(z))), list(range(b, len(i)))
    if keys == "instruction+query":
        return list(range(len(z))), [*range(a), *range(b, len(i))]
    ra = reference_start(tokenizer, zsl_text, zsl_prefix)
    rb = reference_start(tokenizer, icl_text, icl_prefix)
    if ra < a or ra >= len(z) or ra - a != rb - b:
        return None
    return list(range(ra, len(z))), list(range(rb, len(i)))


@dataclass(frozen=True)
class Query:
    """One test query with its two prompts and SimAM's key positions in each."""

    id: str
    target: str
    zsl_text: str
    zsl_prefix: str
    icl_text: str
    icl_prefix: str
    zsl_ids: tuple[int, ...]
    icl_ids: tuple[int, ...]
    zsl_keys: tuple[int, ...]
    icl_keys: tuple[int, ...]
    #: the item's shortcut answer (the scorer reads it, :mod:`iclft.icl.scoring`)
    shortcut_target: str | None = None


def choose_queries(
    tokenizer: Any, task_name: str, shots: int, n: int, seed: int, keys: str = "reference"
) -> tuple[list[Query], list[dict[str, str]]]:
    """The first ``n`` clean queries of ``seed`` whose instruction and query tokens align in the
    ZSL and ICL prompts, and ``[{id, reason}]`` for the ones skipped on the way."""
    from iclft.icl.prompts import DemoPool, build_prompt
    from iclft.tasks import get_task

    task = get_task(task_name)
    demos = DemoPool(task, seed, "shared", shots)._shared_list()[:shots]  # = the GD data
    chosen: list[Query] = []
    skipped: list[dict[str, str]] = []
    for q in task.generate("clean", 4 * n + 8, seed):
        if len(chosen) == n:
            break
        if any(d.question == q.question for d in demos):
            skipped.append({"id": q.id, "reason": "the query is one of the demonstrations"})
            continue
        zsl, icl = build_prompt(task, q, [], 0), build_prompt(task, q, demos, shots)
        pos = key_positions(tokenizer, zsl.text, zsl.prefix, icl.text, icl.prefix, keys)
        if pos is None:
            skipped.append(
                {"id": q.id, "reason": "instruction/query tokens differ between ZSL and ICL"}
            )
            continue
        chosen.append(
            Query(
                id=q.id,
                target=q.target,
                zsl_text=zsl.text,
                zsl_prefix=zsl.prefix,
                icl_text=icl.text,
                icl_prefix=icl.prefix,
                zsl_ids=tuple(_encode(tokenizer, zsl.text)),
                icl_ids=tuple(_encode(tokenizer, icl.text)),
                zsl_keys=tuple(pos[0]),
                icl_keys=tuple(pos[1]),
                shortcut_target=q.shortcut_target,
            )
        )
    return chosen, skipped


# ----------------------------------------------------------------------------------------------
# Recording one setting


def record(
    anatomy: Any, queries: Sequence[Query], icl: bool, advance: Callable[[int], None]
) -> Recordings:
    """h ``[L, D]`` and m ``[L, H, K]`` at the last position of each query's prompt (the ICL
    prompt if ``icl``, else the ZSL prompt; keys: the query's key positions in that prompt).

    One forward per query: :func:`~iclft.analysis.capture.capture_qk` runs it, with hooks on the
    attention outputs (the ``ATTN`` sites of :func:`~iclft.analysis.capture.capture`) around it;
    only the last position's logits are computed."""
    from iclft.analysis.capture import capture_qk, keep_in
    from iclft.models.anatomy import Site

    layers = range(anatomy.n_layers)
    device = next(anatomy.model.parameters()).device
    out: dict[int, torch.Tensor] = {}  # layer -> h of the current query

    def keep(layer: int) -> Callable[[torch.Tensor], None]:
        return keep_in(out, layer, select=lambda x: x[0, -1])

    hs, ms = [], []
    for q in queries:
        ids = torch.tensor([q.icl_ids if icl else q.zsl_ids], device=device)
        keys = list(q.icl_keys if icl else q.zsl_keys)
        with anatomy.hooks({Site(layer, "attn"): keep(layer) for layer in layers}):
            qk = capture_qk(anatomy, input_ids=ids, use_cache=False, logits_to_keep=1)
        hs.append(torch.stack([out[layer] for layer in layers]).float().cpu())
        m = torch.stack([qk[layer].scores([-1], keys)[0, :, 0] for layer in layers])
        ms.append(m.float().cpu())
        advance(1)
    return Recordings(h=torch.stack(hs), m=tuple(ms))


def answers(
    model: nn.Module,
    tokenizer: Any,
    task_name: str,
    queries: Sequence[Query],
    icl: bool,
    advance: Callable[[int], None],
) -> list[Score]:
    """Each query's answer, judged by the evaluator's exact-match scorer
    (:mod:`iclft.icl.scoring`): greedy generation, or the likelier choice for choice tasks."""
    from iclft.icl.engine import Engine
    from iclft.icl.scoring import get_scorer
    from iclft.tasks import get_task

    task = get_task(task_name)
    engine = Engine(model, tokenizer, max_new_tokens=MAX_NEW_TOKENS)
    texts = [q.icl_text if icl else q.zsl_text for q in queries]
    prefixes = [q.icl_prefix if icl else q.zsl_prefix for q in queries]
    if task.choices is not None:
        choices = list(task.choices)
        conts = [[" " + c for c in choices]] * len(texts)
        scores = engine.loglik(texts, conts, prefixes, progress=advance)
        scoring = "loglik"
        responses = [choices[max(range(len(choices)), key=s.__getitem__)] for s in scores]
    else:
        scoring = "generate"
        responses = engine.generate(texts, prefixes, progress=advance)
    score = get_scorer(scoring, "exact")
    return [score(task, q, r) for q, r in zip(queries, responses)]


# ----------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class Measured:
    """Everything recorded on one model (trained or untrained): recordings per setting (each
    random control a list of draws), answers where computed, update norms, cast diagnostics."""

    rec: dict[str, Recordings]
    draws: dict[str, list[Recordings]]
    preds: dict[str, list[str | None]]
    norms: dict[str, Any]
    cast: dict[str, Any]
    #: whether each answer is right (the scorer's judgement), per setting answered
    correct: dict[str, list[bool]] = field(default_factory=dict)


@torch.no_grad()
def _cast_check(base: nn.Module, master: nn.Module, cast: nn.Module) -> dict[str, float | None]:
    """How much of the fp32 update survives the cast to the evaluation dtype: cosine and norm
    ratio of Δ_cast to Δ_fp32 over every parameter (1 and 1 in fp32)."""
    dot = nm = nc = 0.0
    for p, m, c in zip(base.parameters(), master.parameters(), cast.parameters()):
        dm, dc = (m.double() - p.double()), (c.double() - p.double())
        dot, nm, nc = (
            dot + float((dm * dc).sum()),
            nm + float(dm.pow(2).sum()),
            nc + float(dc.pow(2).sum()),
        )
    if nm == 0:
        return {"cosine": None, "norm_ratio": None}
    return {
        "cosine": json_number(dot / math.sqrt(nm * max(nc, EPS))),
        "norm_ratio": json_number(math.sqrt(nc / nm)),
    }


def measure(
    model: nn.Module,
    tok: Any,
    spec: SimilaritySpec,
    queries: Sequence[Query],
    *,
    label: str,
    stream: int,
    with_answers: bool,
    track: Track,
    timings: dict[str, float],
    lrs: Mapping[str, float],
) -> Measured:
    """ZSL, ICL, GD, layer-causal GD and their random controls on ``model``; answers (for
    accuracy and Rec2FTP) only for ZSL, ICL and the two updates, and only ``with_answers``."""
    from iclft.faults import kill_point
    from iclft.finetune.gd import cast_like, sgd_on_demonstrations
    from iclft.models.anatomy import anatomy

    an = anatomy(model)
    out = Measured({}, {}, {}, {}, {})

    def observe(name: str, m: nn.Module, icl: bool = False, answer: bool = True) -> Recordings:
        t0 = time.time()
        answer = answer and with_answers
        total = (2 if answer else 1) * len(queries)
        advance = track(f"{label} {name}: {len(queries)} queries", total)
        r = record(anatomy(m), queries, icl, advance)
        if answer:
            judged = answers(m, tok, spec.task, queries, icl, advance)
            out.preds[name] = [j.prediction for j in judged]
            out.correct[name] = [j.correct for j in judged]
        timings[f"{label}_{name}_s"] = round(time.time() - t0, 3)
        kill_point(f"similarity:{name}" if label == "trained" else f"similarity:{label}-{name}")
        return r

    out.rec["zsl"] = observe("zsl", model)
    out.rec["icl"] = observe("icl", model, icl=True)
    for i, u in enumerate(UPDATES):
        advance = track(f"{label} {u}: SGD on {spec.shots} demonstrations (lr {lrs[u]:g})", 1)
        t0 = time.time()
        master = sgd_on_demonstrations(
            model, tok, spec.task, spec.shots, spec.seed, lrs[u], layer_causal=u == "lcgd",
            master=True,
        )  # fmt: skip
        timings[f"{label}_{u}_train_s"] = round(time.time() - t0, 3)
        advance(1)
        if next(model.parameters()).dtype != torch.float32:
            cast = cast_like(copy.deepcopy(master), model)
            out.cast[u] = _cast_check(model, master, cast)
        else:
            cast = master
        del master
        out.norms[u] = update_norms(an.blocks, anatomy(cast).blocks)
        out.rec[u] = observe(u, cast)
        rname, draws, rnorms = RANDOM[u], [], []
        for r in range(spec.random_draws):
            rand = random_update(model, cast, seed_of(spec.seed, stream, i, r))
            rnorms.append(update_norms(an.blocks, anatomy(rand).blocks))
            draws.append(observe(f"{rname}[{r}]", rand, answer=False))
            del rand
        out.draws[rname] = draws
        out.norms[rname] = rnorms[0]
        del cast
    return out


def summarise(
    m: Measured, spec: SimilaritySpec, rng: np.random.Generator, layers: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """``metric -> setting -> stat`` for one model (module docstring; stats from
    :func:`stat_of` and :func:`random_stat_of`; the SimAM metrics average ``layers``)."""
    kw = dict(n_boot=spec.n_boot, rng=rng)
    z, i = m.rec["zsl"], m.rec["icl"]
    out: dict[str, dict[str, Any]] = {name: {} for name in LAYER_METRICS}
    for u in UPDATES:
        for name, v in per_query(z, i, m.rec[u]).items():
            out[name][u] = stat_of(v, **kw, layers=_layers(name, layers))
        rname = RANDOM[u]
        per_draw = [per_query(z, i, d) for d in m.draws[rname]]
        for name in LAYER_METRICS:
            out[name][rname] = random_stat_of(
                [d[name] for d in per_draw], **kw, layers=_layers(name, layers)
            )
    dai = np.random.default_rng(seed_of(spec.seed, 99))
    out["simaou"]["dai_uniform"] = stat_of(dai_uniform(z, i, dai, normalise=False), **kw)
    out["simaou_norm"]["dai_uniform"] = stat_of(dai_uniform(z, i, dai, normalise=True), **kw)
    out["simam"]["zsl"] = stat_of(zsl_simam(z, i), **kw, layers=layers)
    return out


def _layers(metric: str, simam: Sequence[int]) -> Sequence[int] | None:
    """The layers a metric's single number averages: :func:`simam_layers` for the SimAM
    metrics, every layer (``None``) for the others."""
    return simam if metric in SIMAM_METRICS else None


def simam_layers(n_layers: int, rope: bool) -> list[int]:
    """The layers SimAM and SimAM_Δ average over: every layer but 0 on a model with rotary
    positions. Layer 0's queries and keys are the tokens' own embeddings, and with relative
    positions its score from the last token to a query token is the same whatever comes
    before the query: ICL cannot change it (what it changes is rounding, ~1e-6 relative), so
    cos(m_ICL - m_ZSL, .) there is the cosine of rounding noise. With learned absolute
    positions (GPT-2, GPT-Neo) the demonstrations move the query's positions, and layer 0
    stays."""
    return list(range(1 if rope and n_layers > 1 else 0, n_layers))


def layer0_icl_change(zsl: Recordings, icl: Recordings) -> float | None:
    """max over queries of ||m_ICL - m_ZSL|| / ||m_ZSL|| at layer 0 (all heads): how much
    ICL moved the scores that :func:`simam_layers` leaves out."""
    rel = [float((mi[0] - mz[0]).double().norm() / mz[0].double().norm().clamp_min(EPS))
           for mz, mi in zip(zsl.m, icl.m)]  # fmt: skip
    return max(rel) if rel else None


def f2t_subset(
    m: Measured, correct: Mapping[str, Sequence[bool]], spec: SimilaritySpec,
    rng: np.random.Generator, layers: Sequence[int],
) -> dict[str, Any]:  # fmt: skip
    """Dai et al.'s subset per update: the queries ZSL gets wrong and both ICL and the update
    get right; every layer metric on that subset (``None`` when it is empty)."""
    out: dict[str, Any] = {}
    z, i = m.rec["zsl"], m.rec["icl"]
    for u in UPDATES:
        keep = [not a and b and c for a, b, c in zip(correct["zsl"], correct["icl"], correct[u])]
        idx = [k for k, ok in enumerate(keep) if ok]
        row: dict[str, Any] = {"n": len(idx)}
        if idx:
            vals = per_query(z, i, m.rec[u])
            for name in LAYER_METRICS:
                row[name] = stat_of(vals[name][idx], n_boot=spec.n_boot, rng=rng,
                                    layers=_layers(name, layers))  # fmt: skip
        out[u] = row
    return out


def choose_lr(
    model: nn.Module,
    tok: Any,
    spec: SimilaritySpec,
    heldout: Sequence[Query],
    track: Track,
) -> dict[str, Any]:
    """Deutch et al.'s choice of learning rate: for each update (GD, layer-causal GD) and each
    lr of the grid, the accuracy on held-out queries (not the test queries) of the model after
    the update; the best wins, ties going to the smaller lr. Returns ``{grid, n_heldout,
    heldout_ids, heldout_accuracy: {update: [acc per lr]}, chosen: {update: lr}}``."""
    from iclft.finetune.gd import sgd_on_demonstrations

    accs: dict[str, list[float]] = {}
    for u in UPDATES:
        accs[u] = []
        for lr in spec.lrs:
            advance = track(f"lr grid {u} {lr:g}: SGD + {len(heldout)} held-out", len(heldout) + 1)
            new = sgd_on_demonstrations(
                model, tok, spec.task, spec.shots, spec.seed, lr, layer_causal=u == "lcgd"
            )
            advance(1)
            judged = answers(new, tok, spec.task, heldout, False, advance)
            accs[u].append(sum(j.correct for j in judged) / len(heldout))
            del new
    order = sorted(range(len(spec.lrs)), key=lambda j: spec.lrs[j])
    chosen = {u: spec.lrs[max(order, key=lambda j: (accs[u][j], -spec.lrs[j]))] for u in UPDATES}
    return {
        "grid": list(spec.lrs),
        "n_heldout": len(heldout),
        "heldout_ids": [q.id for q in heldout],
        "heldout_accuracy": {u: json_numbers(a) for u, a in accs.items()},
        "chosen": chosen,
    }


def run_similarity(
    spec: SimilaritySpec,
    out_dir: Path,
    *,
    model: str | None = None,
    device: str = "auto",
    track: Track | None = None,
    loaded: Any = None,
    force: bool = False,
) -> SimilarityResult:
    """``iclft analyze similarity``: load the model at ``spec.dtype`` (``loaded`` may be an
    already loaded ``LoadedModel``: tests, the runner), :func:`measure_similarity`, then
    :func:`write_similarity` into ``out_dir``; returns the record. ``out_dir`` is new, empty or
    an earlier similarity output (replaced whole); another's is refused unless ``force``."""
    from iclft.models import load_model
    from iclft.store import claim_output_dir

    claim = claim_output_dir(Path(out_dir), "analyze similarity", force=force)
    out_dir = claim.path
    started = time.time()
    t0 = time.time()
    lm = loaded if loaded is not None else load_model(model, device=device, dtype=spec.dtype)
    timings = {"load_s": round(time.time() - t0, 3)}
    report = measure_similarity(spec, lm, track, timings)
    if claim.state == "own":  # an earlier analysis here: replaced whole
        claim.clear()
    write_similarity(report, out_dir, started=started, timings=timings, lm=lm)
    return report


def measure_similarity(
    spec: SimilaritySpec, lm: Any, track: Track | None = None, timings: dict | None = None
) -> SimilarityResult:
    """Record ZSL, ICL, GD, layer-causal GD and the controls (random updates, and the untrained
    model) on the loaded model ``lm`` and compute the metrics with intervals; returns the
    record (``timings`` gets the seconds of each part). Writes nothing
    (:func:`write_similarity` does)."""
    from iclft.icl.engine import context_limit
    from iclft.models.anatomy import anatomy

    track = track or _no_track
    timings = {} if timings is None else timings
    base, tok = lm.model, lm.tokenizer
    an = anatomy(base)

    n_heldout = spec.heldout if len(spec.lrs) > 1 else 0
    queries, skipped = choose_queries(
        tok, spec.task, spec.shots, spec.n + n_heldout, spec.seed, spec.keys
    )
    queries, heldout = queries[: spec.n], queries[spec.n :]
    if not queries:
        raise UserError(
            f"no {spec.task} query has instruction/query tokens that align between the ZSL and "
            f"ICL prompts with this tokenizer ({len(skipped)} tried)"
        )
    limit = context_limit(base)
    longest = max(len(q.icl_ids) for q in queries) + MAX_NEW_TOKENS
    if limit is not None and longest > limit:
        raise UserError(
            f"a {spec.shots}-shot {spec.task} prompt takes {longest} tokens, more than the "
            f"model's context of {limit}; use fewer --shots"
        )

    if n_heldout:
        t0 = time.time()
        lr_choice = choose_lr(base, tok, spec, heldout, track)
        timings["lr_grid_s"] = round(time.time() - t0, 3)
    else:
        lr_choice = {"grid": list(spec.lrs), "chosen": {u: spec.lrs[0] for u in UPDATES}}
    common = dict(track=track, timings=timings, lrs=lr_choice["chosen"])
    measured = {"trained": measure(base, tok, spec, queries, label="trained", stream=0,
                                   with_answers=True, **common)}  # fmt: skip
    if spec.untrained:
        rand_model = untrained_model(base, seed_of(spec.seed, 1))
        measured["untrained"] = measure(rand_model, tok, spec, queries, label="untrained",
                                        stream=1, with_answers=False, **common)  # fmt: skip
        del rand_model

    rng = np.random.default_rng(seed_of(spec.seed, 2))  # every bootstrap, in a fixed order
    tr = measured["trained"]
    correct = tr.correct
    layers = simam_layers(an.n_layers, an.family.rope)
    change = layer0_icl_change(tr.rec["zsl"], tr.rec["icl"])
    metrics = {name: summarise(m, spec, rng, layers) for name, m in measured.items()}
    kw = dict(n_boot=spec.n_boot, rng=rng)
    metrics["trained"]["rec2ftp"] = {
        u: rec2ftp_stat(correct["zsl"], correct["icl"], correct[u], **kw) for u in UPDATES
    }
    accuracy = {s: accuracy_stat(c, **kw) for s, c in correct.items()}
    f2t = f2t_subset(tr, correct, spec, rng, layers)

    summary: dict[str, Any] = {"n_queries": len(queries)}
    for mname, per_metric in metrics.items():
        pre = "" if mname == "trained" else f"{mname}_"
        for name, per_setting in per_metric.items():
            for setting, st in per_setting.items():
                summary[f"{pre}{name}_{setting}"] = _interval(st)
    for s, st in accuracy.items():
        summary[f"acc_{s}"] = _interval(st)

    report = SimilarityResult(
        task=spec.task,
        spec=spec.model_dump(mode="json"),
        model=lm.describe(),
        anatomy={"arch": an.arch, "n_layers": an.n_layers, "n_heads": an.n_heads},
        dtype=str(lm.dtype),
        protocol=how_measured(spec, layers, an.n_layers, change),  # on disk: "protocol"
        n_queries=len(queries),
        skipped=skipped,
        lr=lr_choice,
        summary=summary,
        metrics=metrics,
        f2t=f2t,
        accuracy=accuracy,
        update_norms={
            mname: {
                u: {
                    "total": json_number(math.sqrt(sum(x * x for x in v))),
                    "per_layer": json_numbers(v),
                }
                for u, v in m.norms.items()
            }
            for mname, m in measured.items()
        },
        update_cast={mname: m.cast for mname, m in measured.items() if m.cast} or None,
        simam_layers=layers,
        per_query={
            "ids": [q.id for q in queries],
            "targets": [q.target for q in queries],
            "predictions": tr.preds,
            "correct": correct,
        },
    )
    return report


def write_similarity(
    report: SimilarityResult, out_dir: Path, *, started: float, timings: dict, lm: Any
) -> None:
    """The one writer of a similarity result: ``similarity.json``, the per-layer figure
    (``similarity_per_layer.png``) and ``manifest.json`` (``lm``: the ``LoadedModel``)."""
    from iclft.store import write_json_atomic, write_manifest

    spec = report.spec  # the SimilaritySpec it ran with, as a dict
    write_json_atomic(out_dir / "similarity.json", report)
    label = lm.resolved.alias or lm.resolved.spec
    plot_similarity(
        report.metrics,
        f"{spec['task']} · {label} · {spec['shots']} shots · lr "
        + " / ".join(f"{u} {lr:g}" for u, lr in report.lr["chosen"].items())
        + f" · {report.n_queries} queries",
        out_dir / "similarity_per_layer.png",
    )
    write_manifest(
        out_dir,
        command="analyze similarity",
        started=started,
        model=lm.describe(),
        seeds={
            "queries": spec["seed"],
            "demonstrations": spec["seed"],
            "random_update": f"seed_of({spec['seed']}, model, update, draw)",
            "untrained_init": seed_of(spec["seed"], 1),
            "bootstrap": seed_of(spec["seed"], 2),
        },
        device=str(lm.device),
        dtype=str(lm.dtype),
        torch_threads=torch.get_num_threads(),
        spec=spec,
        timings=timings,
    )


def how_measured(
    spec: SimilaritySpec,
    layers: Sequence[int] = (),
    n_layers: int = 0,
    layer0_change: float | None = None,
) -> dict[str, str]:
    """How every number in similarity.json was made (written into it)."""
    keys = {
        "reference": "the query's own tokens, from the first token holding a query character "
        "(the reference's attn_map[:, :, -1, c_len:]); no BOS, instruction, demonstration or "
        "separator tokens",
        "query+separator": "the query's own tokens and the separator tokens before them (NOT "
        "the reference's boundary: iclft's earlier default)",
        "instruction+query": "BOS, instruction and query tokens (not the reference's key set)",
    }[spec.keys]
    if len(layers) == n_layers:
        averaged = f"SimAM and SimAM_delta: mean over all {n_layers} layers"
    else:
        left = sorted(set(range(n_layers)) - set(layers))
        averaged = (
            f"SimAM and SimAM_delta: mean over layers {layers[0]}-{layers[-1]} (simam_layers); "
            f"layer {', '.join(map(str, left))} left out (per_layer keeps it): with rotary "
            "positions ICL cannot change layer-0 scores to the query's own tokens"
            + (
                f" (here at most {layer0_change:.2g} relative, rounding)"
                if layer0_change is not None
                else ""
            )
        )
    return {
        "ft": "plain SGD, batch 1, one epoch over the k demonstrations of the shared k-shot "
        "prompt, loss on all tokens, K/V projections only, no clipping, fp32 master weights "
        "(cast to the evaluation dtype afterwards: see update_cast)",
        "random": f"per updated tensor: theta + ||delta|| * eps/||eps||, eps ~ N(0, I) on the "
        f"entries the update moved; {spec.random_draws} seeded draws, norm-matched to GD "
        "(random_gd) and layer-causal GD (random_lcgd) separately; value = mean over draws, "
        "sd/min/max = spread over draws",
        "dai_uniform": "Dai et al.'s baseline: cos(h_ICL - h_ZSL, u), u ~ U[0, 1)^D per query and "
        "layer (on h/||h|| for simaou_norm)",
        "untrained": "the same protocol on a randomly initialised model of the same "
        "architecture (its config's initialisation, seeded), same queries and learning rates",
        "lr": "one learning rate given"
        if len(spec.lrs) == 1
        else "per update, the grid value "
        f"with the best accuracy on {spec.heldout} held-out clean queries after the update "
        "(ties: the smaller lr), as Deutch et al.; see lr",
        "position": "h and m read at the last prompt token (the one predicting the answer); "
        "DIFFERS from the reference, which reads at the first candidate label token appended "
        "to the prompt",
        "keys": keys,
        "simam_layers": averaged,
        "interval": f"95% percentile bootstrap over queries ({spec.n_boot} resamples, seeded); "
        "one demonstration set; random controls: draws resampled, then queries",
        "f2t": "Dai et al.'s subset: queries ZSL gets wrong and both ICL and the update right",
        "correct": "task parser, exact match (loglik for choice tasks)",
    }


def _interval(st: Mapping[str, Any]) -> dict[str, Any]:
    return {k: st.get(k) for k in ("value", "ci_low", "ci_high")}


def plot_similarity(metrics: Mapping[str, Any], title: str, path: Path) -> Path:
    """One panel per (model, layer metric): GD, layer-causal GD and their random controls (mean
    over draws) by layer, Dai et al.'s uniform baseline dotted, ZSL SimAM dashed; one row per
    model (trained, untrained); written atomically as PNG (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from iclft.store import atomic_writer

    names = {
        "simaou": "SimAOU",
        "simaou_norm": "SimAOU_norm",
        "simam": "SimAM",
        "simam_delta": "SimAM_Δ",
    }
    styles = {
        "gd": dict(color="tab:blue", label="GD"),
        "lcgd": dict(color="tab:orange", label="layer-causal GD"),
        "random_gd": dict(color="tab:blue", alpha=0.45, linestyle=":", label="random (GD norms)"),
        "random_lcgd": dict(
            color="tab:orange", alpha=0.45, linestyle=":", label="random (LCGD norms)"
        ),
        "dai_uniform": dict(color="tab:gray", linestyle="-.", label="Dai uniform [0,1)"),
        "zsl": dict(color="black", linestyle="--", label="ZSL (no update)"),
    }
    rows = [m for m in MODELS if m in metrics]
    fig = Figure(figsize=(4.0 * len(names), 3.2 * len(rows)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(names), squeeze=False)
    for row, mname in zip(axes, rows):
        for ax, (key, label) in zip(row, names.items()):
            for setting, st in metrics[mname][key].items():
                ys = [float("nan") if y is None else y for y in st["per_layer"]]
                ax.plot(range(len(ys)), ys, marker=".", **styles[setting])
            ax.axhline(0, color="lightgray", linewidth=0.8)
            ax.set_title(f"{label} · {mname} model", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("cosine")
        row[0].legend(fontsize=7)
        row[list(names).index("simam")].legend(fontsize=7)  # the only panel with ZSL
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_writer(Path(path), "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return Path(path)
