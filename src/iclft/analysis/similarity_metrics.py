"""The ICL-vs-gradient-descent metrics and their uncertainty (the definitions are in
:mod:`iclft.analysis.similarity` and docs/science.md).

* the metrics, on tensors whose last dimension is the vector compared: SimAOU, SimAOU_norm,
  SimAM, SimAM_Δ per query and layer, Rec2FTP over queries, Dai et al.'s uniform baseline;
* their 95% intervals: a bootstrap over queries (and over the draws of a random control).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

EPS = 1e-12

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


def per_query(zsl: Recordings, icl: Recordings, ft: Recordings) -> dict[str, torch.Tensor]:
    """Each layer metric per query and layer, ``[N, L]`` (heads averaged), of one FT setting
    against ICL (module docstring)."""
    z, i, f = zsl, icl, ft

    def heads(x: Sequence[torch.Tensor]) -> torch.Tensor:  # N x [L, H] -> [N, L]
        return torch.stack([v.mean(-1) for v in x])

    return {
        "simaou": simaou(z.h, i.h, f.h),
        "simaou_norm": simaou_norm(z.h, i.h, f.h),
        "simam": heads([simam(mi, mf) for mi, mf in zip(i.m, f.m)]),
        "simam_delta": heads([simam_delta(mz, mi, mf) for mz, mi, mf in zip(z.m, i.m, f.m)]),
    }


def compare(zsl: Recordings, icl: Recordings, ft: Recordings) -> dict[str, torch.Tensor]:
    """The per-layer metrics ``[L]`` of one FT setting against ICL: :func:`per_query` averaged
    over the queries."""
    return {k: v.mean(0) for k, v in per_query(zsl, icl, ft).items()}


def zsl_simam(zsl: Recordings, icl: Recordings) -> torch.Tensor:
    """ZSL SimAM per query and layer ``[N, L]``: cos(m_ICL, m_ZSL), heads averaged."""
    return torch.stack([simam(mi, mz).mean(-1) for mi, mz in zip(icl.m, zsl.m)])


def dai_uniform(
    zsl: Recordings, icl: Recordings, rng: np.random.Generator, normalise: bool
) -> torch.Tensor:
    """Dai et al.'s random baseline ``[N, L]``: cos(h_ICL − h_ZSL, u), u ~ U[0, 1)^D drawn per
    query and layer (``normalise``: every h / ‖h‖ first, as for SimAOU_norm)."""
    hz, hi = (unit(zsl.h), unit(icl.h)) if normalise else (zsl.h, icl.h)
    u = torch.from_numpy(rng.random(tuple(hz.shape)))
    return cos(hi - hz, u)


# ----------------------------------------------------------------------------------------------
# Uncertainty: bootstrap over queries (and over demonstration sets, when several are drawn)


def bootstrap_interval(
    stat: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    *,
    n_boot: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile interval of ``stat`` under a two-level bootstrap: each array is ``[S, N]``
    (S demonstration sets or random draws, each on the same N queries); resample S sets with
    replacement, then N queries with replacement, one query resample shared by the drawn sets
    (the design is crossed, as in :func:`iclft.icl.metrics.two_level_means`). ``stat`` maps
    the resampled arrays, each ``[n_boot, S * N]``, to ``[n_boot]`` (NaN where undefined;
    those draws are left out). With S = 1 this is the ordinary bootstrap over queries.
    ``(None, None)`` when nothing is left."""
    if n_boot == 0:
        return (None, None)
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    S, N = arrays[0].shape
    sets = rng.integers(0, S, size=(n_boot, S, 1))  # [B, S, 1]
    items = np.broadcast_to(rng.integers(0, N, size=(n_boot, 1, N)), (n_boot, S, N))
    values = np.asarray(stat(*(a[sets, items].reshape(n_boot, S * N) for a in arrays)))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (None, None)
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    d = den.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, num.sum(axis=-1) / np.where(d > 0, d, 1), np.nan)


def stat_of(
    values: torch.Tensor,
    *,
    n_boot: int,
    rng: np.random.Generator,
    layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """``{value, ci_low, ci_high, per_layer}`` of a metric given per query and layer ``[N, L]``:
    value = mean over queries and ``layers`` (default all); interval over queries; per-layer
    means of every layer."""
    v = values.double().numpy()
    avg = v if layers is None else v[:, list(layers)]
    lo, hi = bootstrap_interval(_mean, [avg.mean(1)[None]], n_boot=n_boot, rng=rng)
    return {"value": json_number(avg.mean()), "ci_low": json_number(lo), "ci_high": json_number(hi),
            "per_layer": json_numbers(v.mean(0).tolist())}  # fmt: skip


def random_stat_of(
    draws: Sequence[torch.Tensor],
    *,
    n_boot: int,
    rng: np.random.Generator,
    layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The random control over R draws (each ``[N, L]``): :func:`stat_of` of the mean over draws,
    with its interval from the two-level bootstrap over draws, then queries (so it includes
    how much the control depends on the directions drawn), plus each draw's value and their
    spread (sd with ddof 1, min, max)."""
    out = stat_of(torch.stack(list(draws)).mean(0), n_boot=n_boot, rng=rng, layers=layers)
    sel = [d.double().numpy() for d in draws]
    sel = sel if layers is None else [d[:, list(layers)] for d in sel]
    per_query = np.stack([d.mean(1) for d in sel])  # [R, N]
    lo, hi = bootstrap_interval(_mean, [per_query], n_boot=n_boot, rng=rng)
    out["ci_low"], out["ci_high"] = json_number(lo), json_number(hi)
    per_draw = np.array([float(d.mean()) for d in sel])
    out["draws"] = json_numbers(per_draw.tolist())
    out["sd"] = json_number(per_draw.std(ddof=1)) if len(per_draw) > 1 else None
    out["min"], out["max"] = json_number(per_draw.min()), json_number(per_draw.max())
    return out


def rec2ftp_stat(
    c_zsl: Sequence[bool], c_icl: Sequence[bool], c_ft: Sequence[bool], *, n_boot: int,
    rng: np.random.Generator,
) -> dict[str, Any]:  # fmt: skip
    """Rec2FTP from per-query correctness, with its bootstrap interval over queries."""
    z, i, f = (np.asarray(c, dtype=bool) for c in (c_zsl, c_icl, c_ft))
    num, den = (i & f & ~z).astype(float)[None], (f & ~z).astype(float)[None]
    value = _ratio(num, den)[0]
    lo, hi = bootstrap_interval(_ratio, [num, den], n_boot=n_boot, rng=rng)
    return {"value": json_number(value), "ci_low": json_number(lo), "ci_high": json_number(hi),
            "n_ft_new": int(den.sum())}  # fmt: skip


def accuracy_stat(correct: Sequence[bool], *, n_boot: int, rng: np.random.Generator) -> dict:
    """Accuracy with its bootstrap interval over queries."""
    c = np.asarray(correct, dtype=float)[None]
    lo, hi = bootstrap_interval(_mean, [c], n_boot=n_boot, rng=rng)
    return {"value": json_number(c.mean()), "ci_low": json_number(lo), "ci_high": json_number(hi)}


def json_number(v: float | None) -> float | None:
    """A number as similarity.json stores it: 6 decimals, and None for NaN or inf."""
    if v is None:
        return None
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None


def json_numbers(values: Sequence[float] | torch.Tensor) -> list[float | None]:
    seq = values.tolist() if isinstance(values, torch.Tensor) else values
    return [json_number(v) for v in seq]
