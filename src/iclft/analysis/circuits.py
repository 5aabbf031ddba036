"""Circuits from patching effects, and how far a circuit moves between two settings.

Effects of a setting over pairs p = 1..n aggregate as a ratio of means,

    e(c) = mean_p [m_patched(c) - m_corrupt]_p / mean_p [m_clean - m_corrupt]_p,

which stays finite when a single pair has a tiny gap. A circuit is the set of heads and MLPs
with the largest |e(c)|: the top ``k``, or the fewest whose |e| add up to ``share`` of the
total |e| (residual-stream components are excluded: each carries everything below it).

Shift between settings a and b (base vs ICL, base vs FT, ...) on the same pairs:

* ``jaccard``: 1 - |C_a ∩ C_b| / |C_a ∪ C_b|
* ``cosine``: 1 - cos(e_a, e_b) over all heads and MLPs
* ``per_layer``: 1 - cos over each layer's heads and MLP
* ``attention`` / ``mlp``: jaccard and cosine restricted to heads / to MLPs

each with a percentile bootstrap interval: pairs are resampled with replacement (the same
resample for both settings, since they share pairs) with a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from iclft.analysis.anatomy import Component, parse_component
from iclft.analysis.patching import PairEffects
from iclft.errors import UserError


@dataclass(frozen=True)
class EffectTable:
    """One setting's per-pair results: ``raw[p, c] = m_patched - m_corrupt`` and
    ``gap[p] = m_clean - m_corrupt``."""

    components: tuple[str, ...]
    pair_ids: tuple[str, ...]
    raw: np.ndarray  # [pairs, components]
    gap: np.ndarray  # [pairs]
    clean: np.ndarray  # [pairs]
    corrupt: np.ndarray  # [pairs]

    @classmethod
    def from_pairs(cls, results: Sequence[PairEffects]) -> EffectTable:
        if not results:
            raise UserError("no pairs to aggregate")
        comps = results[0].components
        if any(r.components != comps for r in results):
            raise ValueError("pairs were patched over different components")
        return cls(
            components=comps,
            pair_ids=tuple(r.pair_id for r in results),
            raw=np.stack([r.raw for r in results]),
            gap=np.array([r.gap for r in results]),
            clean=np.array([r.clean for r in results]),
            corrupt=np.array([r.corrupt for r in results]),
        )

    def effects(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Normalised effect per component, ratio of means over pairs ``idx`` (default all)."""
        raw = self.raw if idx is None else self.raw[idx]
        gap = self.gap if idx is None else self.gap[idx]
        denom = gap.mean()
        if denom == 0:
            return np.full(raw.shape[1], np.nan)
        return raw.mean(axis=0) / denom


def _kinds(names: Sequence[str]) -> list[Component]:
    return [parse_component(n) for n in names]


def circuit(
    effects: np.ndarray,
    names: Sequence[str],
    *,
    top_k: int | None = 10,
    share: float | None = None,
    kinds: Sequence[str] = ("head", "mlp"),
) -> list[str]:
    """Names of the components in the circuit (largest |effect| first)."""
    comps = _kinds(names)
    eligible = [i for i, c in enumerate(comps) if c.kind in kinds and np.isfinite(effects[i])]
    order = sorted(eligible, key=lambda i: -abs(effects[i]))
    if share is not None:
        if not 0 < share <= 1:
            raise UserError(f"share must be in (0, 1], got {share}")
        mags = np.abs(effects[order])
        total = mags.sum()
        if total == 0:
            return []
        n = int(np.searchsorted(np.cumsum(mags), share * total - 1e-12) + 1)
        return [names[i] for i in order[:n]]
    if top_k is None or top_k < 1:
        raise UserError(f"top_k must be a positive integer, got {top_k}")
    return [names[i] for i in order[:top_k]]


def jaccard_distance(a: Sequence[str], b: Sequence[str]) -> float:
    """``1 - |a ∩ b| / |a ∪ b|`` (0 for two empty sets)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 0.0 if not union else 1.0 - len(sa & sb) / len(union)


def cosine_distance(x: np.ndarray, y: np.ndarray) -> float:
    """``1 - x.y / (|x| |y|)``; NaN when either vector is zero."""
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0 or not (np.isfinite(nx) and np.isfinite(ny)):
        return float("nan")
    return float(1.0 - np.dot(x, y) / (nx * ny))


@dataclass(frozen=True)
class Interval:
    """A point estimate and a bootstrap percentile interval."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float | None]:
        def f(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 6)

        return {"value": f(self.value), "ci_low": f(self.ci_low), "ci_high": f(self.ci_high)}


@dataclass(frozen=True)
class Shift:
    """How much the circuit moves from setting ``a`` to setting ``b``."""

    a: str
    b: str
    jaccard: Interval
    cosine: Interval
    per_layer: list[Interval]
    attention: dict[str, Interval]
    mlp: dict[str, Interval]
    n_boot: int
    level: float = 0.95
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "from": self.a,
            "to": self.b,
            "jaccard_distance": self.jaccard.to_dict(),
            "cosine_distance": self.cosine.to_dict(),
            "per_layer_cosine_distance": [i.to_dict() for i in self.per_layer],
            "attention": {k: v.to_dict() for k, v in self.attention.items()},
            "mlp": {k: v.to_dict() for k, v in self.mlp.items()},
            "bootstrap": {"n": self.n_boot, "level": self.level},
        }


def _shift_stats(
    ea: np.ndarray,
    eb: np.ndarray,
    comps: list[Component],
    names: Sequence[str],
    top_k: int | None,
    share: float | None,
    n_layers: int,
) -> np.ndarray:
    """The shift statistics as one flat vector: [jaccard, cosine, attn jaccard, attn cosine,
    mlp jaccard, mlp cosine, per-layer cosine x n_layers]."""
    keep = np.array([c.kind in ("head", "mlp") for c in comps])
    heads = np.array([c.kind == "head" for c in comps])
    mlps = np.array([c.kind == "mlp" for c in comps])
    ca = set(circuit(ea, names, top_k=top_k, share=share))
    cb = set(circuit(eb, names, top_k=top_k, share=share))
    head_names = {n for n, h in zip(names, heads) if h}
    mlp_names = {n for n, m in zip(names, mlps) if m}
    out = [
        jaccard_distance(ca, cb),
        cosine_distance(ea[keep], eb[keep]),
        jaccard_distance(ca & head_names, cb & head_names),
        cosine_distance(ea[heads], eb[heads]),
        jaccard_distance(ca & mlp_names, cb & mlp_names),
        cosine_distance(ea[mlps], eb[mlps]),
    ]
    layers = np.array([c.layer for c in comps])
    for layer in range(n_layers):
        sel = keep & (layers == layer)
        out.append(cosine_distance(ea[sel], eb[sel]))
    return np.array(out, dtype=np.float64)


def circuit_shift(
    a: EffectTable,
    b: EffectTable,
    *,
    names: tuple[str, str] = ("a", "b"),
    top_k: int | None = 10,
    share: float | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator,
) -> Shift:
    """Circuit shift from ``a`` to ``b`` with bootstrap intervals over their common pairs."""
    if a.components != b.components:
        raise ValueError("settings were patched over different components")
    common = [p for p in a.pair_ids if p in set(b.pair_ids)]
    if not common:
        raise UserError(f"settings {names[0]} and {names[1]} share no pairs")
    ia = np.array([a.pair_ids.index(p) for p in common])
    ib = np.array([b.pair_ids.index(p) for p in common])
    comps = _kinds(a.components)
    n_layers = max(c.layer for c in comps) + 1
    args = (comps, a.components, top_k, share, n_layers)
    point = _shift_stats(a.effects(ia), b.effects(ib), *args)
    boots = np.empty((n_boot, point.size))
    for i in range(n_boot):
        s = rng.integers(0, len(common), size=len(common))
        boots[i] = _shift_stats(a.effects(ia[s]), b.effects(ib[s]), *args)
    alpha = (1 - level) / 2
    with warnings.catch_warnings():  # an all-NaN column (e.g. a zero vector) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanquantile(boots, alpha, axis=0) if n_boot else np.full(point.size, np.nan)
        hi = np.nanquantile(boots, 1 - alpha, axis=0) if n_boot else np.full(point.size, np.nan)
    iv = [Interval(float(p), float(lo_), float(hi_)) for p, lo_, hi_ in zip(point, lo, hi)]
    return Shift(
        a=names[0],
        b=names[1],
        jaccard=iv[0],
        cosine=iv[1],
        attention={"jaccard_distance": iv[2], "cosine_distance": iv[3]},
        mlp={"jaccard_distance": iv[4], "cosine_distance": iv[5]},
        per_layer=iv[6:],
        n_boot=n_boot,
        level=level,
    )
