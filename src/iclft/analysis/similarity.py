"""ICL vs gradient descent: how ICL-like is an update (Dai et al., 2023; Deutch et al., 2024).

Three settings on the same clean test queries (DESIGN.md):

* ``zsl``: the base model, instruction + query;
* ``icl``: the base model, instruction + the k shared demonstrations of the seed + query;
* FT: the base model after plain SGD on exactly those k demonstrations (batch 1, one epoch in
  prompt order, loss on all tokens, K/V projections only:
  :func:`iclft.finetune.gd.sgd_on_demonstrations`), given instruction + query. Three FT
  updates: ``gd`` (vanilla), ``lcgd`` (layer-causal, same learning rate) and ``random``.

At the last prompt position we record, in every layer l, the attention output h (the output
projection's output, before the residual add) and every head's pre-softmax scores m to the K
key positions of the instruction and the query. In the ICL prompt the demonstration positions
are dropped, so the K keys hold the same tokens in every setting. With
cos(a, b) = a·b / (‖a‖ ‖b‖) (0 when either vector is 0):

    SimAOU^l      = mean_q cos(h_ICL − h_ZSL, h_FT − h_ZSL)
    SimAOU_norm^l = SimAOU^l with every h replaced by h / ‖h‖     (what Dai et al.'s code did)
    SimAM^l       = mean_q mean_head cos(m_ICL, m_FT)
    ZSL SimAM^l   = mean_q mean_head cos(m_ICL, m_ZSL)             (SimAM of "no update at all")
    SimAM_Δ^l     = mean_q mean_head cos(m_ICL − m_ZSL, m_FT − m_ZSL)
    Rec2FTP       = |(C_ICL ∩ C_FT) \\ C_ZSL| / |C_FT \\ C_ZSL|

Each per-layer metric's single number is its mean over layers. C_s is the set of queries that
setting s answers right: the task's parser and exact match on greedy generation, or the choice
with the highest log-likelihood for choice tasks. SimAOU_norm has a floor: with pure-noise updates
of norm √3·‖h_ZSL‖ it is 1/4, not 0 (a test checks this), so report it beside SimAOU.

Random-update baseline (``random``): the base model with every parameter tensor θ that vanilla GD
moved set to θ + ‖Δθ‖ · ε/‖ε‖, where Δθ is GD's update of that tensor and ε ~ N(0, I) restricted
to the entries GD moved (seeded by the spec's seed). It moves the same K/V parameters by the same
per-tensor norms as GD, in a random direction; every metric is computed for it exactly as for GD.

Kendall τ (optional in DESIGN.md) is not computed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iclft.errors import UserError

EPS = 1e-12
UPDATES = ("gd", "lcgd", "random")  # the FT settings, each compared with ICL
LAYER_METRICS = ("simaou", "simaou_norm", "simam", "simam_delta")
MAX_NEW_TOKENS = 10
Track = Callable[[str, int], Callable[[int], None]]
"""``track(description, total)`` returns an ``advance(n)`` callback (a progress bar)."""


def _no_track(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


# ----------------------------------------------------------------------------------------------
# The metrics (on tensors whose last dimension is the vector compared)


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) along the last dimension, in float64; 0 where either vector is 0."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(EPS) * b.norm(dim=-1).clamp_min(EPS))


def unit(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ along the last dimension."""
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def simaou(h_zsl: torch.Tensor, h_icl: torch.Tensor, h_ft: torch.Tensor) -> torch.Tensor:
    """cos(h_ICL − h_ZSL, h_FT − h_ZSL): do ICL and FT move the attention output alike?"""
    return cos(h_icl - h_zsl, h_ft - h_zsl)


def simaou_norm(h_zsl: torch.Tensor, h_icl: torch.Tensor, h_ft: torch.Tensor) -> torch.Tensor:
    """SimAOU after h -> h / ‖h‖ (Dai et al.'s code); its noise floor is 1/4, not 0."""
    return simaou(unit(h_zsl), unit(h_icl), unit(h_ft))


def simam(m_icl: torch.Tensor, m_ft: torch.Tensor) -> torch.Tensor:
    """cos(m_ICL, m_FT) of pre-softmax attention scores (``m_ft`` = m_ZSL gives ZSL SimAM)."""
    return cos(m_icl, m_ft)


def simam_delta(m_zsl: torch.Tensor, m_icl: torch.Tensor, m_ft: torch.Tensor) -> torch.Tensor:
    """cos(m_ICL − m_ZSL, m_FT − m_ZSL): SimAM of the changes, not dominated by m_ZSL."""
    return cos(m_icl - m_zsl, m_ft - m_zsl)


def rec2ftp(c_zsl: set, c_icl: set, c_ft: set) -> float | None:
    """|(C_ICL ∩ C_FT) \\ C_ZSL| / |C_FT \\ C_ZSL|: of what FT newly gets right, the share ICL gets
    right too; ``None`` when FT gets nothing new right."""
    new_ft = c_ft - c_zsl
    return len((c_icl & c_ft) - c_zsl) / len(new_ft) if new_ft else None


def per_layer(values: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``[L]``: per-query values ``[L, ...]`` (stacked ``[N, L, ...]``) averaged over the queries
    and over any trailing dimension (the heads): mean_q mean_head."""
    x = torch.stack(list(values)) if not isinstance(values, torch.Tensor) else values
    return x.reshape(x.shape[0], x.shape[1], -1).mean(dim=(0, 2))


@dataclass(frozen=True)
class Recordings:
    """One setting over the N queries: attention outputs ``h [N, L, D]`` and pre-softmax scores
    ``m``, one ``[L, H, K_q]`` per query (K_q, the query's key count, varies)."""

    h: torch.Tensor
    m: tuple[torch.Tensor, ...]


def compare(zsl: Recordings, icl: Recordings, ft: Recordings) -> dict[str, torch.Tensor]:
    """The per-layer metrics ``[L]`` of one FT setting against ICL (module docstring)."""
    z, i, f = zsl, icl, ft
    return {
        "simaou": per_layer(simaou(z.h, i.h, f.h)),
        "simaou_norm": per_layer(simaou_norm(z.h, i.h, f.h)),
        "simam": per_layer([simam(mi, mf) for mi, mf in zip(i.m, f.m)]),
        "simam_delta": per_layer([simam_delta(mz, mi, mf) for mz, mi, mf in zip(z.m, i.m, f.m)]),
    }


# ----------------------------------------------------------------------------------------------
# Updates


@torch.no_grad()
def random_update(base: nn.Module, updated: nn.Module, seed: int) -> nn.Module:
    """A copy of ``base`` moved like ``updated`` but in a random direction: per parameter tensor,
    θ + ‖Δθ‖ · ε/‖ε‖ with Δθ = θ_updated − θ and ε ~ N(0, I) on the entries Δθ moved."""
    gen = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(base)
    moved = dict(updated.named_parameters())
    for name, p in new.named_parameters():
        delta = moved[name].detach() - p
        support = delta != 0
        if not support.any():
            continue
        eps = torch.randn(p.shape, generator=gen).to(p.device, p.dtype) * support
        p += delta.norm() * eps / eps.norm()
    for p in new.parameters():
        p.requires_grad_(False)
    return new


@torch.no_grad()
def update_norms(base_blocks: Sequence[nn.Module], new_blocks: Sequence[nn.Module]) -> list[float]:
    """‖Δθ‖ of each decoder layer (all its parameters together)."""
    return [
        math.sqrt(
            sum(
                float((q - p).double().pow(2).sum()) for p, q in zip(a.parameters(), b.parameters())
            )
        )
        for a, b in zip(base_blocks, new_blocks)
    ]


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
    """Index of the first token of the query part of ``text`` (= ``prefix`` + query): where the
    full text's tokens stop agreeing with the prefix's own tokens (a token merged across the
    boundary counts as query)."""
    return _lcp(_encode(tokenizer, text), _encode(tokenizer, prefix))


def icl_key_positions(
    tokenizer: Any, zsl_text: str, zsl_prefix: str, icl_text: str, icl_prefix: str
) -> list[int] | None:
    """Positions in the ICL prompt of the ZSL prompt's tokens (instruction + query), the
    demonstrations dropped; ``None`` when the tokens there differ from the ZSL prompt's."""
    z, i = _encode(tokenizer, zsl_text), _encode(tokenizer, icl_text)
    a = query_start(tokenizer, zsl_text, zsl_prefix)  # instruction tokens: z[:a]
    b = query_start(tokenizer, icl_text, icl_prefix)  # query tokens: i[b:]
    keys = [*range(a), *range(b, len(i))]
    if b < a or a >= len(z) or [i[p] for p in keys] != z:
        return None
    return keys


@dataclass(frozen=True)
class Query:
    """One test query with its two prompts and where the ZSL tokens sit in the ICL prompt."""

    id: str
    target: str
    zsl_text: str
    zsl_prefix: str
    icl_text: str
    icl_prefix: str
    zsl_ids: tuple[int, ...]
    icl_ids: tuple[int, ...]
    icl_keys: tuple[int, ...]


def choose_queries(
    tokenizer: Any, task_name: str, shots: int, n: int, seed: int
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
        keys = icl_key_positions(tokenizer, zsl.text, zsl.prefix, icl.text, icl.prefix)
        if keys is None:
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
                icl_keys=tuple(keys),
            )
        )
    return chosen, skipped


# ----------------------------------------------------------------------------------------------
# Recording one setting


def record(
    anatomy: Any, queries: Sequence[Query], icl: bool, advance: Callable[[int], None]
) -> Recordings:
    """h ``[L, D]`` and m ``[L, H, K]`` at the last position of each query's prompt (the ICL
    prompt if ``icl``, keys = instruction + query tokens; else the ZSL prompt, keys = all).

    One forward per query: :func:`~iclft.analysis.capture.capture_qk` runs it, with hooks on the
    attention outputs (what :func:`~iclft.analysis.capture.attention_outputs` reads) around it;
    only the last position's logits are computed."""
    from iclft.analysis.anatomy import Site
    from iclft.analysis.capture import capture_qk

    layers = range(anatomy.n_layers)
    device = next(anatomy.model.parameters()).device
    out: dict[int, torch.Tensor] = {}  # layer -> h of the current query

    def keep(layer: int) -> Callable[[torch.Tensor], None]:
        return lambda x: out.__setitem__(layer, x[0, -1].detach())

    hs, ms = [], []
    for q in queries:
        ids = torch.tensor([q.icl_ids if icl else q.zsl_ids], device=device)
        keys = list(q.icl_keys) if icl else slice(None)
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
) -> list[str | None]:
    """Each query's parsed answer: greedy generation, or the likelier choice for choice tasks."""
    from iclft.icl.engine import Engine
    from iclft.tasks import get_task

    task = get_task(task_name)
    engine = Engine(model, tokenizer, max_new_tokens=MAX_NEW_TOKENS)
    texts = [q.icl_text if icl else q.zsl_text for q in queries]
    prefixes = [q.icl_prefix if icl else q.zsl_prefix for q in queries]
    if task.choices is not None:
        choices = list(task.choices)
        conts = [[" " + c for c in choices]] * len(texts)
        scores = engine.loglik(texts, conts, prefixes, progress=advance)
        return [choices[max(range(len(choices)), key=s.__getitem__)] for s in scores]
    return [task.parse(o) for o in engine.generate(texts, prefixes, progress=advance)]


# ----------------------------------------------------------------------------------------------
# The pipeline


@dataclass(frozen=True)
class SimilaritySpec:
    """What to analyse; :meth:`check` validates it before any model is loaded."""

    task: str
    shots: int
    n: int
    lr: float
    seed: int = 0

    def check(self) -> SimilaritySpec:
        from iclft.tasks import get_task

        get_task(self.task)
        if not isinstance(self.shots, int) or self.shots < 1:
            raise UserError(
                f"--shots must be a positive integer (demonstrations for ICL and GD), "
                f"got {self.shots}"
            )
        if not isinstance(self.n, int) or self.n < 1:
            raise UserError(f"-n must be a positive integer (test queries), got {self.n}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise UserError(f"--lr must be a positive finite number, got {self.lr}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be a non-negative integer, got {self.seed}")
        return self


def run_similarity(
    spec: SimilaritySpec,
    out_dir: Path,
    *,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    track: Track | None = None,
    loaded: Any = None,
) -> dict[str, Any]:
    """Record ZSL, ICL, GD, layer-causal GD and random-update settings, compute the metrics and
    write ``out_dir/{similarity.json, similarity_per_layer.png, manifest.json}``; returns the
    similarity.json content. ``loaded`` may be an already loaded ``LoadedModel`` (tests)."""
    from iclft.analysis.anatomy import anatomy
    from iclft.faults import kill_point
    from iclft.finetune.gd import sgd_on_demonstrations
    from iclft.icl.engine import context_limit
    from iclft.models import load_model
    from iclft.store import ensure_writable_dir, write_json_atomic, write_manifest

    spec.check()
    track = track or _no_track
    out_dir = ensure_writable_dir(Path(out_dir))
    started = time.time()
    timings: dict[str, float] = {}

    t0 = time.time()
    lm = loaded if loaded is not None else load_model(model, device=device, dtype=dtype)
    base, tok = lm.model, lm.tokenizer
    an = anatomy(base)
    timings["load_s"] = round(time.time() - t0, 3)

    queries, skipped = choose_queries(tok, spec.task, spec.shots, spec.n, spec.seed)
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

    rec: dict[str, Recordings] = {}
    preds: dict[str, list[str | None]] = {}
    norms: dict[str, list[float]] = {}

    def observe(name: str, m: nn.Module, icl: bool = False) -> None:
        t0 = time.time()
        advance = track(f"{name}: capture and answer {len(queries)} queries", 2 * len(queries))
        rec[name] = record(anatomy(m), queries, icl, advance)
        preds[name] = answers(m, tok, spec.task, queries, icl, advance)
        timings[f"{name}_s"] = round(time.time() - t0, 3)
        kill_point(f"similarity:{name}")

    def descend(layer_causal: bool) -> nn.Module:
        name = "lcgd" if layer_causal else "gd"
        advance = track(f"{name}: SGD on {spec.shots} demonstrations (lr {spec.lr:g})", 1)
        t0 = time.time()
        new = sgd_on_demonstrations(
            base, tok, spec.task, spec.shots, spec.seed, spec.lr, layer_causal=layer_causal
        )
        timings[f"{name}_train_s"] = round(time.time() - t0, 3)
        norms[name] = update_norms(an.blocks, anatomy(new).blocks)
        advance(1)
        return new

    observe("zsl", base)
    observe("icl", base, icl=True)
    gd = descend(layer_causal=False)
    observe("gd", gd)
    rand = random_update(base, gd, spec.seed)
    norms["random"] = update_norms(an.blocks, anatomy(rand).blocks)
    del gd
    observe("random", rand)
    del rand
    lcgd = descend(layer_causal=True)
    observe("lcgd", lcgd)
    del lcgd

    correct = {s: [p == q.target for p, q in zip(ps, queries)] for s, ps in preds.items()}
    sets = {s: {q.id for q, ok in zip(queries, c) if ok} for s, c in correct.items()}
    layer = {u: compare(rec["zsl"], rec["icl"], rec[u]) for u in UPDATES}
    zsl_simam = per_layer([simam(mi, mz) for mi, mz in zip(rec["icl"].m, rec["zsl"].m)])

    metrics: dict[str, Any] = {
        name: {u: _profile(layer[u][name]) for u in UPDATES} for name in LAYER_METRICS
    }
    metrics["simam"]["zsl"] = _profile(zsl_simam)
    metrics["rec2ftp"] = {u: rec2ftp(sets["zsl"], sets["icl"], sets[u]) for u in UPDATES}
    accuracy = {s: sum(c) / len(c) for s, c in correct.items()}

    summary: dict[str, Any] = {"n_queries": len(queries)}
    for name in LAYER_METRICS:
        for u in UPDATES:
            summary[f"{name}_{u}"] = metrics[name][u]["mean"]
    summary["simam_zsl"] = metrics["simam"]["zsl"]["mean"]
    for u in UPDATES:
        summary[f"rec2ftp_{u}"] = _num(metrics["rec2ftp"][u])
    for s in ("zsl", "icl", *UPDATES):
        summary[f"acc_{s}"] = _num(accuracy[s])

    report: dict[str, Any] = {
        "task": spec.task,
        "spec": asdict(spec),
        "model": lm.resolved.describe(),
        "anatomy": {"arch": an.arch, "n_layers": an.n_layers, "n_heads": an.n_heads},
        "protocol": {
            "ft": "plain SGD, batch 1, one epoch over the k demonstrations of the shared k-shot "
            "prompt, loss on all tokens, K/V projections only",
            "random": "per updated tensor: theta + ||delta_gd|| * eps/||eps||, eps ~ N(0, I) on "
            "the entries vanilla GD moved",
            "position": "last prompt token; keys = instruction + query tokens",
            "correct": "task parser, exact match (loglik for choice tasks)",
        },
        "n_queries": len(queries),
        "skipped": skipped,
        "summary": summary,
        "metrics": metrics,
        "accuracy": {s: _num(a) for s, a in accuracy.items()},
        "update_norms": {
            u: {"total": _num(math.sqrt(sum(x * x for x in v))), "per_layer": _nums(v)}
            for u, v in norms.items()
        },
        "per_query": {
            "ids": [q.id for q in queries],
            "targets": [q.target for q in queries],
            "predictions": preds,
            "correct": correct,
        },
    }
    write_json_atomic(out_dir / "similarity.json", report)
    label = lm.resolved.alias or lm.resolved.spec
    plot_similarity(
        metrics,
        f"{spec.task} · {label} · {spec.shots} shots · lr {spec.lr:g} · {len(queries)} queries",
        out_dir / "similarity_per_layer.png",
    )
    write_manifest(
        out_dir,
        command="analyze similarity",
        started=started,
        model=lm.resolved.describe(),
        seeds={"queries": spec.seed, "demonstrations": spec.seed, "random_update": spec.seed},
        device=str(lm.device),
        dtype=str(lm.dtype),
        torch_threads=torch.get_num_threads(),
        spec=asdict(spec),
        timings=timings,
    )
    return report


def _num(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None


def _nums(values: Sequence[float] | torch.Tensor) -> list[float | None]:
    return [_num(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]


def _profile(per_layer_values: torch.Tensor) -> dict[str, Any]:
    """``{"mean": mean over layers, "per_layer": [...]}``."""
    return {"mean": _num(per_layer_values.mean()), "per_layer": _nums(per_layer_values)}


def plot_similarity(metrics: Mapping[str, Any], title: str, path: Path) -> Path:
    """One panel per layer metric: GD, layer-causal GD and random update by layer (ZSL SimAM
    dashed on the SimAM panel); written atomically as PNG (matplotlib's Agg canvas)."""
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
        "random": dict(color="tab:gray", label="random update"),
        "zsl": dict(color="black", linestyle="--", label="ZSL (no update)"),
    }
    fig = Figure(figsize=(4.0 * len(names), 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names))
    for ax, (key, label) in zip(axes, names.items()):
        for setting, prof in metrics[key].items():
            ys = [float("nan") if y is None else y for y in prof["per_layer"]]
            ax.plot(range(len(ys)), ys, marker=".", **styles[setting])
        ax.axhline(0, color="lightgray", linewidth=0.8)
        ax.set_title(label)
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine")
    axes[0].legend(fontsize=8)
    axes[list(names).index("simam")].legend(fontsize=8)  # the only panel with ZSL
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_writer(Path(path), "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return Path(path)
