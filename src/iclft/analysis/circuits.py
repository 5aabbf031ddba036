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
This definition is ours: the seed paper (Yin et al., 2024) released no code for circuit shift.

Controls, since a distance alone has no reference for "no change":

* Split-half noise floor: the same statistics between two disjoint random halves of the pairs
  under one setting (averaged over ``n_splits`` splits and over both settings), i.e. the
  distance that pair-sampling noise alone produces. A half holds n/2 pairs, so the floor is
  that of an n/2-pair comparison; ``half_shift`` is the shift measured like-for-like (setting a
  on one half, b on the other, same splits), and ``half_shift / floor`` the fair ratio. These
  are descriptions: a distance is positive even without a shift, so its bootstrap interval
  always excludes 0, and a ratio to the floor carries no uncertainty. Neither decides.
* The shift test (:func:`shift_test`) decides "shifted": a paired permutation test of
  T = 1 - cos(e_a, e_b) over all heads and MLPs. Each pair's normalised effects
  r_s[p] = raw_s[p] / mean_p gap_s (so e_s = mean_p r_s[p]) are swapped between the two
  settings with probability 1/2, independently per pair; under "no shift" (the two settings'
  effects exchangeable within a pair) every swap is as likely as the observed labelling, so
  p = (1 + #{T* >= T}) / (1 + B) over B random swaps (every one of the 2^n swaps, and
  p = #{T* >= T} / 2^n, when 2^n <= B). Its null distribution is the noise floor at the full
  n pairs. Attention-only and MLP-only p-values come from the same swaps (descriptive).
* ICL's shift against fine-tuning's (:func:`compare_shifts`, the paper's claim that circuits
  move more under ICL than under FT): D = d(base, ICL) - d(base, FT) on the pairs common to
  the three settings, with d the *debiased* cosine distance (below), tested by the jackknife
  over pairs: pseudo-values n D - (n - 1) D_(-p), a t test with n - 1 degrees of freedom,
  two-sided. The plain distance is inflated by each setting's noise (a noisier ICL looks more
  shifted: on synthetic data where only the noise differed, a bootstrap test of the plain
  difference rejected the true null 22-93% of the time at nominal 5%); the debiased one
  estimates the same population value without that bias, and the jackknife removes what
  remains to first order.
* Debiased cosine distance: 1 - U_ab / sqrt(U_aa U_bb), U_xy = sum_{p != q} r_x[p].r_y[q] /
  (n (n - 1)), an unbiased estimate of E_x . E_y (the products of a pair with itself, which
  carry the noise, left out); undefined (``null``) when U_aa or U_bb is not positive.
* The gap guard: a setting whose mean clean-corrupt gap ``m_clean - m_corrupt`` is not above 0
  by a one-sided t test over pairs (level (1 - 0.95) / 2 = 2.5%, the lower end of the 95% t
  interval above 0) has no identified circuit (its effects divide by a gap indistinguishable
  from 0); a shift from or to it reports no distances and enters no Holm family (its values and
  its permutation test are kept under ``unguarded``). (The percentile bootstrap it
  replaces called a zero gap identified 13% of the time at 3 pairs.)
* Attribution checked against exact patching: :class:`Agreement` compares the two on the
  components that exact patching re-measured (Spearman, top-k overlap, scale).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from iclft.analysis.patching import PairEffects, PositionEffects
from iclft.errors import UserError
from iclft.models.anatomy import Component, parse_component
from iclft.stats import N_PERMUTATIONS


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
    return list(_parsed(tuple(names)))


@functools.lru_cache(maxsize=16)
def _parsed(names: tuple[str, ...]) -> tuple[Component, ...]:
    """Parsed once per name list: the bootstrap and the floor call :func:`circuit` thousands
    of times on the same components."""
    return tuple(parse_component(n) for n in names)


@functools.lru_cache(maxsize=16)
def _kind_mask(names: tuple[str, ...], kinds: tuple[str, ...]) -> np.ndarray:
    return np.array([c.kind in kinds for c in _parsed(names)], dtype=bool)


def circuit(
    effects: np.ndarray,
    names: Sequence[str],
    *,
    top_k: int | None = 10,
    share: float | None = None,
    kinds: Sequence[str] = ("head", "mlp"),
) -> list[str]:
    """Names of the components in the circuit (largest |effect| first)."""
    effects = np.asarray(effects, dtype=np.float64)
    eligible = np.flatnonzero(_kind_mask(tuple(names), tuple(kinds)) & np.isfinite(effects))
    order = eligible[np.argsort(-np.abs(effects[eligible]), kind="stable")].tolist()
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
        return {
            "value": _num(self.value),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
        }


def _num(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def _p(v: float | None) -> float | None:
    """A p-value for JSON: 4 significant digits (a small p keeps its digits), ``None`` if
    unknown."""
    return None if v is None or not np.isfinite(v) else float(f"{float(v):.4g}")


def _percentiles(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles, ignoring NaN (an
    all-NaN column stays NaN; no samples: NaN)."""
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) == 0:
        nan = np.full(samples.shape[1] if samples.ndim == 2 else 1, np.nan)
        return nan, nan
    samples = samples.reshape(len(samples), -1)
    alpha = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(samples, alpha, axis=0), np.nanquantile(samples, 1 - alpha, axis=0)


# ---------------------------------------------------------------------------------------------
# The gap guard


#: how the gap guard decides, in words (written into every gap check)
GAP_TEST = (
    "one-sided t test over pairs of mean(m_clean - m_corrupt) > 0; identified when the "
    "lower end of the two-sided t interval at `level` is above 0"
)


@dataclass(frozen=True)
class GapCheck:
    """Is a setting's circuit identified? Its mean clean-corrupt gap over pairs with a t
    interval; identified when the interval lies above 0 (a one-sided t test at level
    (1 - ``level``) / 2, whose size holds with 3 pairs where a percentile bootstrap's did not)."""

    mean: float
    ci_low: float
    ci_high: float
    n_pairs: int
    #: one-sided p of "mean gap > 0" (``nan`` with fewer than 2 pairs)
    p_value: float = float("nan")
    level: float = 0.95

    @property
    def identified(self) -> bool:
        return bool(np.isfinite(self.ci_low) and self.ci_low > 0)

    @property
    def reason(self) -> str | None:
        if self.identified:
            return None
        if self.n_pairs < 2:
            return "fewer than 2 pairs: no interval for the clean-corrupt gap"
        return (
            f"the {self.level:.0%} t interval of the clean-corrupt gap over pairs "
            f"[{self.ci_low:.3g}, {self.ci_high:.3g}] is not above 0"
        )

    def to_dict(self) -> dict:
        return {
            "identified": self.identified,
            "reason": self.reason,
            "gap_mean": _num(self.mean),
            "gap_ci_low": _num(self.ci_low),
            "gap_ci_high": _num(self.ci_high),
            "n_pairs": self.n_pairs,
            "p_value": _p(self.p_value),
            "test": GAP_TEST,
            "level": self.level,
        }


def gap_check(gap: np.ndarray, *, level: float = 0.95) -> GapCheck:
    """The t interval of ``mean(gap)`` over pairs (``gap[p] = m_clean - m_corrupt``) and the
    one-sided t test of mean > 0 (equal gaps: a zero-width interval)."""
    from scipy import stats

    gap = np.asarray(gap, dtype=np.float64)  # [pairs]
    n = gap.size
    mean = float(gap.mean()) if n else float("nan")
    if n < 2 or not np.all(np.isfinite(gap)):
        return GapCheck(mean, np.nan, np.nan, n, float("nan"), level)
    se = float(gap.std(ddof=1)) / np.sqrt(n)
    if se == 0:
        return GapCheck(mean, mean, mean, n, 0.0 if mean > 0 else 1.0, level)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    p = float(stats.t.sf(mean / se, n - 1))
    return GapCheck(mean, mean - half, mean + half, n, p, level)


# ---------------------------------------------------------------------------------------------
# Shift, its split-half noise floor


#: the statistics of :func:`_shift_stats` that get a noise floor (the per-layer ones do not)
FLOOR_STATS: tuple[tuple[str, str], ...] = (
    ("all", "jaccard_distance"),
    ("all", "cosine_distance"),
    ("attention", "jaccard_distance"),
    ("attention", "cosine_distance"),
    ("mlp", "jaccard_distance"),
    ("mlp", "cosine_distance"),
)


def split_halves(
    n: int, n_splits: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` random splits of ``range(n)`` into two disjoint halves of ``n // 2`` each
    (one index left out when ``n`` is odd); none when ``n < 2``."""
    if n < 2:
        return []
    h = n // 2
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        out.append((np.sort(perm[:h]), np.sort(perm[h : 2 * h])))
    return out


@dataclass(frozen=True)
class NoiseFloor:
    """Split-half floor of each statistic in :data:`FLOOR_STATS`: its mean over splits (and
    the central ``level`` range of splits), per setting and averaged over the two."""

    floor: list[Interval]  # mean of the two settings'
    floor_a: list[Interval]
    floor_b: list[Interval]
    half_shift: list[Interval]  # a on one half vs b on the other (both ways), same splits
    n_splits: int
    half_size: int
    level: float = 0.95

    def to_dict(self, shift: np.ndarray) -> dict:
        """``shift``: the full-sample point values of the same statistics."""
        out: dict = {
            "method": (
                "split-half: the same statistic between two disjoint random halves of the "
                "common pairs under one setting; value = mean over splits (and over both "
                "settings), ci_low/ci_high = central range of the splits"
            ),
            "n_splits": self.n_splits,
            "half_size": self.half_size,
        }
        for i, (group, stat) in enumerate(FLOOR_STATS):
            f, hs = self.floor[i].value, self.half_shift[i].value
            entry = {
                "floor": self.floor[i].to_dict(),
                "floor_from": self.floor_a[i].to_dict(),
                "floor_to": self.floor_b[i].to_dict(),
                "half_shift": self.half_shift[i].to_dict(),
                "shift_over_floor": _num(shift[i] / f) if f and np.isfinite(f) else None,
                "half_shift_over_floor": _num(hs / f) if f and np.isfinite(f) else None,
            }
            out.setdefault(group, {})[stat] = entry
        return out


def noise_floor(
    a: EffectTable,
    b: EffectTable,
    ia: np.ndarray,
    ib: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    top_k: int | None,
    share: float | None,
    level: float = 0.95,
) -> NoiseFloor | None:
    """The split-half floor of the shift from ``a`` to ``b`` over their common pairs
    (``ia[j]``, ``ib[j]``: pair j's row in each table) for the given ``splits`` of
    ``range(len(ia))``; ``None`` without splits."""
    if not splits:
        return None
    comps = _kinds(a.components)
    n_layers = max(c.layer for c in comps) + 1
    args = (comps, a.components, top_k, share, n_layers)
    k = len(FLOOR_STATS)
    fa, fb, cross = [], [], []
    for h1, h2 in splits:
        fa.append(_shift_stats(a.effects(ia[h1]), a.effects(ia[h2]), *args)[:k])
        fb.append(_shift_stats(b.effects(ib[h1]), b.effects(ib[h2]), *args)[:k])
        x1 = _shift_stats(a.effects(ia[h1]), b.effects(ib[h2]), *args)[:k]
        x2 = _shift_stats(a.effects(ia[h2]), b.effects(ib[h1]), *args)[:k]
        cross.append((x1 + x2) / 2)
    fa_, fb_, cross_ = np.array(fa), np.array(fb), np.array(cross)  # [splits, k]

    def summary(x: np.ndarray) -> list[Interval]:
        lo, hi = _percentiles(x, level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=0)
        return [Interval(float(m), float(l_), float(h_)) for m, l_, h_ in zip(mean, lo, hi)]

    return NoiseFloor(
        floor=summary((fa_ + fb_) / 2),
        floor_a=summary(fa_),
        floor_b=summary(fb_),
        half_shift=summary(cross_),
        n_splits=len(splits),
        half_size=len(splits[0][0]),
        level=level,
    )


# ---------------------------------------------------------------------------------------------
# Tests: is there a shift (permutation), is ICL's larger than FT's (jackknife)

#: the component groups each shift test reports (decided on "all")
TEST_GROUPS = ("all", "attention", "mlp")
SHIFT_TEST = (
    "paired permutation: each pair's normalised effects swapped between the two settings "
    "with probability 1/2; p = (1 + #{T* >= T}) / (1 + B), or #{T* >= T} / 2^n over every "
    "swap when 2^n <= B; T = 1 - cos over all heads and MLPs"
)
COMPARE_TEST = (
    "jackknife over pairs of D = d(base, icl) - d(base, ft), d the debiased cosine distance "
    "over heads and MLPs; t test on the pseudo-values, n - 1 degrees of freedom, two-sided"
)


def normalised_effects(t: EffectTable, idx: np.ndarray) -> np.ndarray:
    """``r[p, c] = raw[p, c] / mean_p gap[p]`` over pairs ``idx`` (rows), so that
    ``r.mean(0)`` is :meth:`EffectTable.effects` (NaN when the mean gap is 0)."""
    gap = t.gap[idx].mean()
    raw = t.raw[idx]
    return raw / gap if gap != 0 else np.full(raw.shape, np.nan)


def _cos_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - cos(x, y) along the last axis (NaN where either is 0)."""
    nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((nx > 0) & (ny > 0), 1.0 - (x * y).sum(-1) / (nx * ny), np.nan)


def _swaps(n: int, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``[B, n]`` 0/1 swap indicators: every one of the 2^n when 2^n <= ``n_perm`` (exact),
    else ``n_perm`` random ones."""
    if n < 31 and 2**n <= n_perm:
        codes = np.arange(2**n)[:, None]
        return ((codes >> np.arange(n)) & 1).astype(np.float64), True
    return rng.integers(0, 2, size=(n_perm, n)).astype(np.float64), False


@dataclass(frozen=True)
class ShiftTest:
    """The paired permutation test of one shift (see the module docstring), per group of
    components (:data:`TEST_GROUPS`); the decision is taken on ``all``."""

    observed: dict[str, float]
    p_value: dict[str, float]
    null_mean: dict[str, float]
    null_q95: dict[str, float]
    n_pairs: int
    n_perm: int
    exact: bool

    def to_dict(self) -> dict:
        groups = {
            g: {
                "statistic": _num(self.observed[g]),
                "p_value": _p(self.p_value[g]),
                "null_mean": _num(self.null_mean[g]),
                "null_q95": _num(self.null_q95[g]),
            }
            for g in TEST_GROUPS
        }
        return {
            "method": SHIFT_TEST,
            "statistic": "cosine_distance",
            "p_value": _p(self.p_value["all"]),
            "n_pairs": self.n_pairs,
            "n_permutations": self.n_perm,
            "exact": self.exact,
            "groups": groups,
        }


def shift_test(
    ra: np.ndarray,
    rb: np.ndarray,
    names: Sequence[str],
    *,
    n_perm: int = N_PERMUTATIONS,
    rng: np.random.Generator,
) -> ShiftTest | None:
    """The paired permutation test of "no shift" from per-pair normalised effects ``ra``,
    ``rb`` ``[pairs, components]`` (:func:`normalised_effects` of the same pairs); ``None``
    when nothing can be tested (no pairs, no permutations, undefined effects)."""
    n = len(ra)
    if n == 0 or n_perm < 1 or not (np.all(np.isfinite(ra)) and np.all(np.isfinite(rb))):
        return None
    lay = _layout(tuple(names))
    masks = {"all": lay.keep, "attention": lay.heads, "mlp": lay.mlps}
    swap, exact = _swaps(n, n_perm, rng)  # [B, n]
    d = rb - ra  # [n, C]
    moved = swap @ d / n  # [B, C]: how the swapped pairs move each mean
    ea, eb = ra.mean(0), rb.mean(0)
    out: dict[str, dict[str, float]] = {k: {} for k in ("obs", "p", "mean", "q95")}
    for g, m in masks.items():
        t_obs = float(_cos_rows(ea[m], eb[m])) if m.any() else float("nan")
        t_null = _cos_rows((ea + moved)[:, m], (eb - moved)[:, m]) if m.any() else np.array([])
        t_null = t_null[np.isfinite(t_null)]
        if not np.isfinite(t_obs) or t_null.size == 0:
            p = mean = q95 = float("nan")
        else:
            hits = int((t_null >= t_obs - 1e-12 * max(1.0, abs(t_obs))).sum())
            p = hits / t_null.size if exact else (1 + hits) / (1 + t_null.size)
            mean, q95 = float(t_null.mean()), float(np.quantile(t_null, 0.95))
        out["obs"][g], out["p"][g], out["mean"][g], out["q95"][g] = t_obs, p, mean, q95
    return ShiftTest(out["obs"], out["p"], out["mean"], out["q95"], n, len(swap), exact)


def debiased_cosine_distance(ra: np.ndarray, rb: np.ndarray) -> float:
    """1 - U_ab / sqrt(U_aa U_bb) from per-pair rows ``[pairs, components]`` (module
    docstring); NaN with fewer than 2 pairs or when U_aa or U_bb is not positive."""
    return float(_debiased(ra[None], rb[None])[0])


def _debiased(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """:func:`debiased_cosine_distance` of each ``[k, pairs, components]`` slice, ``[k]``."""
    n = ra.shape[1]
    if n < 2:
        return np.full(ra.shape[0], np.nan)
    sa, sb = ra.sum(1), rb.sum(1)  # [k, C]

    def u(x: np.ndarray, y: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
        return ((sx * sy).sum(-1) - (x * y).sum((1, 2))) / (n * (n - 1))

    uab, uaa, ubb = u(ra, rb, sa, sb), u(ra, ra, sa, sa), u(rb, rb, sb, sb)
    ok = (uaa > 0) & (ubb > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, 1.0 - uab / np.sqrt(np.where(ok, uaa * ubb, 1.0)), np.nan)


def _leave_one_out(r: np.ndarray) -> np.ndarray:
    """``[n, n - 1, C]``: ``r`` without each of its n rows in turn."""
    n = len(r)
    keep = ~np.eye(n, dtype=bool)
    return np.stack([r[keep[i]] for i in range(n)])


@dataclass(frozen=True)
class ShiftComparison:
    """Is the shift from ``base`` to ``a`` larger than to ``b``? (see the module docstring)"""

    a: str
    b: str
    n_pairs: int
    #: plain and debiased cosine distances of each shift
    shift_a: float
    shift_b: float
    debiased_a: float
    debiased_b: float
    #: the jackknife estimate of D (debiased a minus debiased b), its standard error, t, p
    diff: float
    se: float
    t: float
    p_value: float
    ci_low: float
    ci_high: float
    level: float = 0.95
    reason: str | None = None

    def to_dict(self) -> dict:
        return {
            "from": "base",
            "a": self.a,
            "b": self.b,
            "question": f"does the circuit move more from base to {self.a} than to {self.b}?",
            "method": COMPARE_TEST,
            "n_pairs": self.n_pairs,
            "cosine_distance": {self.a: _num(self.shift_a), self.b: _num(self.shift_b)},
            "debiased_cosine_distance": {
                self.a: _num(self.debiased_a),
                self.b: _num(self.debiased_b),
            },  # fmt: skip
            "diff": _num(self.diff),
            "se": _num(self.se),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "level": self.level,
            "t": _num(self.t),
            "df": self.n_pairs - 1 if self.n_pairs > 1 else None,
            "p_value": _p(self.p_value),
            "reason": self.reason,
        }


def compare_shifts(
    base: EffectTable,
    a: EffectTable,
    b: EffectTable,
    *,
    names: tuple[str, str] = ("icl", "ft"),
    level: float = 0.95,
) -> ShiftComparison:
    """The jackknife t test of D = d(base, a) - d(base, b) (debiased cosine distances over
    heads and MLPs) on the pairs the three settings share; ``p_value`` NaN with a ``reason``
    when it cannot be made."""
    from scipy import stats

    if not base.components == a.components == b.components:
        raise ValueError("settings were patched over different components")
    common = [p for p in base.pair_ids if p in set(a.pair_ids) & set(b.pair_ids)]
    n = len(common)
    keep = _layout(tuple(base.components)).keep
    rows = [
        normalised_effects(t, np.array([t.pair_ids.index(p) for p in common], dtype=int))[:, keep]
        if n
        else np.zeros((0, int(keep.sum())))
        for t in (base, a, b)
    ]
    r0, ra, rb = rows
    plain_a = float(_cos_rows(r0.mean(0), ra.mean(0))) if n else float("nan")
    plain_b = float(_cos_rows(r0.mean(0), rb.mean(0))) if n else float("nan")
    da, db = debiased_cosine_distance(r0, ra), debiased_cosine_distance(r0, rb)
    nan = float("nan")

    def result(diff=nan, se=nan, t=nan, p=nan, lo=nan, hi=nan, reason=None) -> ShiftComparison:
        return ShiftComparison(names[0], names[1], n, plain_a, plain_b, da, db, diff, se, t, p,
                               lo, hi, level, reason)  # fmt: skip

    if n < 3:
        return result(reason=f"{n} common pairs: the jackknife needs at least 3")
    if not (np.isfinite(da) and np.isfinite(db)):
        return result(reason="an effect vector is indistinguishable from pair noise (its "
                      "debiased squared norm is not positive)")  # fmt: skip
    loo = [_leave_one_out(r) for r in rows]  # each [n, n - 1, C]
    d_loo = _debiased(loo[0], loo[1]) - _debiased(loo[0], loo[2])  # [n]
    if not np.all(np.isfinite(d_loo)):
        return result(reason="a leave-one-out effect vector is indistinguishable from pair "
                      "noise")  # fmt: skip
    pseudo = n * (da - db) - (n - 1) * d_loo
    est = float(pseudo.mean())
    se = float(pseudo.std(ddof=1)) / np.sqrt(n)
    if se == 0:
        return result(diff=est, se=0.0, reason="the jackknife pseudo-values are all equal")
    t = est / se
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(t), n - 1))
    return result(est, se, t, p, est - half, est + half)


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
    floor: NoiseFloor | None = None
    #: the settings of the two whose circuit is not identified (see :class:`GapCheck`)
    not_identified: tuple[str, ...] = ()
    #: the permutation test of "no shift" (``None``: not made)
    test: ShiftTest | None = None
    #: :func:`debiased_cosine_distance` over all heads and MLPs
    debiased_cosine: float = float("nan")
    extra: dict = field(default_factory=dict)

    @property
    def identified(self) -> bool:
        return not self.not_identified

    def _point(self) -> np.ndarray:
        iv = [self.jaccard, self.cosine, *self.attention.values(), *self.mlp.values()]
        return np.array([i.value for i in iv])

    def to_dict(self) -> dict:
        """The shift's record. When a setting is not identified, the distances are ``null``
        and the computed values sit under ``unguarded`` (for diagnosis only)."""
        values = {
            "jaccard_distance": self.jaccard.to_dict(),
            "cosine_distance": self.cosine.to_dict(),
            "cosine_distance_debiased": _num(self.debiased_cosine),
            "per_layer_cosine_distance": [i.to_dict() for i in self.per_layer],
            "attention": {k: v.to_dict() for k, v in self.attention.items()},
            "mlp": {k: v.to_dict() for k, v in self.mlp.items()},
            "noise_floor": self.floor.to_dict(self._point()) if self.floor else None,
            "test": self.test.to_dict() if self.test else None,
        }
        head = {
            "from": self.a,
            "to": self.b,
            "status": "identified" if self.identified else "not identified",
            "not_identified": list(self.not_identified),
        }
        tail = {"bootstrap": {"n": self.n_boot, "level": self.level}}
        if self.identified:
            return {**head, **values, **tail}
        nulls = {k: None for k in values}
        return {**head, **nulls, **tail, "unguarded": values}


@dataclass(frozen=True)
class _Layout:
    """Masks over a component list, computed once per list (the bootstrap and the floor call
    :func:`_shift_stats` thousands of times)."""

    keep: np.ndarray  # heads and MLPs
    heads: np.ndarray
    mlps: np.ndarray
    head_names: frozenset[str]
    mlp_names: frozenset[str]
    layers: np.ndarray  # layer of each kept component


@functools.lru_cache(maxsize=16)
def _layout(names: tuple[str, ...]) -> _Layout:
    comps = _parsed(names)
    heads = np.array([c.kind == "head" for c in comps])
    mlps = np.array([c.kind == "mlp" for c in comps])
    keep = heads | mlps
    return _Layout(
        keep=keep,
        heads=heads,
        mlps=mlps,
        head_names=frozenset(n for n, h in zip(names, heads) if h),
        mlp_names=frozenset(n for n, m in zip(names, mlps) if m),
        layers=np.array([c.layer for c in comps])[keep],
    )


def _per_layer_cosine(x: np.ndarray, y: np.ndarray, layers: np.ndarray, n: int) -> np.ndarray:
    """:func:`cosine_distance` within each of ``n`` layers at once (NaN where it is NaN)."""
    dot = np.bincount(layers, weights=x * y, minlength=n)
    nx = np.sqrt(np.bincount(layers, weights=x * x, minlength=n))
    ny = np.sqrt(np.bincount(layers, weights=y * y, minlength=n))
    ok = (nx > 0) & (ny > 0) & np.isfinite(nx) & np.isfinite(ny)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, 1.0 - dot / (nx * ny), np.nan)


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
    mlp jaccard, mlp cosine, per-layer cosine x n_layers] (the first six: :data:`FLOOR_STATS`)."""
    lay = _layout(tuple(names))
    ca = set(circuit(ea, names, top_k=top_k, share=share))
    cb = set(circuit(eb, names, top_k=top_k, share=share))
    out = [
        jaccard_distance(ca, cb),
        cosine_distance(ea[lay.keep], eb[lay.keep]),
        jaccard_distance(ca & lay.head_names, cb & lay.head_names),
        cosine_distance(ea[lay.heads], eb[lay.heads]),
        jaccard_distance(ca & lay.mlp_names, cb & lay.mlp_names),
        cosine_distance(ea[lay.mlps], eb[lay.mlps]),
    ]
    per_layer = _per_layer_cosine(ea[lay.keep], eb[lay.keep], lay.layers, n_layers)
    return np.concatenate([np.array(out, dtype=np.float64), per_layer])


def circuit_shift(
    a: EffectTable,
    b: EffectTable,
    *,
    names: tuple[str, str] = ("a", "b"),
    top_k: int | None = 10,
    share: float | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    n_splits: int = 100,
    n_perm: int = N_PERMUTATIONS,
    not_identified: Sequence[str] = (),
    rng: np.random.Generator,
) -> Shift:
    """Circuit shift from ``a`` to ``b`` with bootstrap intervals over their common pairs, the
    split-half noise floor (``n_splits`` splits drawn from ``rng`` after the bootstrap; 0: none)
    and the permutation test of "no shift" (``n_perm`` swaps drawn after the splits; 0: none).
    ``not_identified``: the settings (of ``names``) whose gap guard failed."""
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
    lo, hi = _percentiles(boots, level)
    iv = [Interval(float(p), float(lo_), float(hi_)) for p, lo_, hi_ in zip(point, lo, hi)]
    splits = split_halves(len(common), n_splits, rng)
    floor = noise_floor(a, b, ia, ib, splits, top_k=top_k, share=share, level=level)
    ra, rb = normalised_effects(a, ia), normalised_effects(b, ib)
    test = shift_test(ra, rb, a.components, n_perm=n_perm, rng=rng)
    keep = _layout(tuple(a.components)).keep
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
        floor=floor,
        not_identified=tuple(n for n in names if n in set(not_identified)),
        test=test,
        debiased_cosine=debiased_cosine_distance(ra[:, keep], rb[:, keep]),
    )


# ---------------------------------------------------------------------------------------------
# Attribution checked against exact patching


@dataclass(frozen=True)
class Agreement:
    """Attribution-patching effects against exact-patching effects of the same components
    (those attribution ranked highest, re-measured exactly), aggregated over the same pairs."""

    components: tuple[str, ...]  # re-measured, attribution's order (largest |effect| first)
    attribution: np.ndarray  # [components]
    exact: np.ndarray  # [components]
    top_k: int
    spearman: Interval  # over pairs resampled (bootstrap)
    n_eligible: int  # heads and MLPs attribution ranked
    n_boot: int
    level: float = 0.95

    @property
    def overlap(self) -> int:
        """How many of attribution's top ``k`` are in exact's top ``k`` (among the re-measured)."""
        k = self.top_k
        by_exact = np.argsort(-np.abs(self.exact), kind="stable")[:k]
        return len(set(range(min(k, len(self.components)))) & set(by_exact.tolist()))

    @property
    def scale(self) -> float:
        """``sum |exact| / sum |attribution|`` over attribution's top ``k`` (AtP tends to
        underestimate the largest effects: below 1)."""
        k = min(self.top_k, len(self.components))
        den = np.abs(self.attribution[:k]).sum()
        return float(np.abs(self.exact[:k]).sum() / den) if den else float("nan")

    def to_dict(self) -> dict:
        return {
            "components": list(self.components),
            "n_remeasured": len(self.components),
            "n_eligible": self.n_eligible,
            "top_k": self.top_k,
            "spearman": self.spearman.to_dict(),
            "top_k_overlap": self.overlap,
            "top_k_overlap_fraction": _num(self.overlap / min(self.top_k, len(self.components)))
            if self.components
            else None,
            "exact_over_attribution_top_k": _num(self.scale),
            "attribution_effects": [_num(v) for v in self.attribution],
            "exact_effects": [_num(v) for v in self.exact],
            "bootstrap": {"n": self.n_boot, "level": self.level},
        }


def agreement(
    attribution: EffectTable,
    exact: EffectTable,
    *,
    top_k: int,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator,
) -> Agreement:
    """Compare ``attribution`` (every component) with ``exact`` (a subset of them, the same
    pairs): Spearman rank correlation of the aggregated effects over ``exact``'s components,
    with a bootstrap interval over pairs, and the top-``k`` overlap."""
    from scipy.stats import spearmanr

    if attribution.pair_ids != exact.pair_ids:
        raise ValueError("attribution and exact patching ran on different pairs")
    col = np.array([attribution.components.index(c) for c in exact.components])
    n_eligible = sum(parse_component(c).kind in ("head", "mlp") for c in attribution.components)
    att_all = attribution.effects()[col]
    order = np.argsort(-np.abs(att_all), kind="stable")  # attribution's order
    names = tuple(exact.components[i] for i in order)
    att, ex = att_all[order], exact.effects()[order]

    def rho(x: np.ndarray, y: np.ndarray) -> float:
        if len(x) < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return float("nan")
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return float("nan")
        return float(spearmanr(x, y).statistic)

    point = rho(att, ex)
    n = len(exact.pair_ids)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        s = rng.integers(0, n, size=n)
        boots[i] = rho(attribution.effects(s)[col][order], exact.effects(s)[order])
    lo, hi = _percentiles(boots, level)
    return Agreement(
        components=names,
        attribution=att,
        exact=ex,
        top_k=top_k,
        spearman=Interval(point, float(lo[0]), float(hi[0])),
        n_eligible=int(n_eligible),
        n_boot=n_boot,
        level=level,
    )


# ---------------------------------------------------------------------------------------------
# Effects per position


@dataclass(frozen=True)
class PositionTable:
    """Per-position effects over pairs, aligned on the last prompt token (offset 0): at each
    offset a ratio of means over the pairs that have it,
    ``e(c, o) = sum_p raw[p, c, o] / sum_p gap[p]``."""

    components: tuple[str, ...]
    offsets: tuple[int, ...]
    effects: np.ndarray  # [components, offsets]
    n_pairs: tuple[int, ...]  # pairs that reach each offset

    @classmethod
    def from_pairs(cls, results: Sequence[PositionEffects]) -> PositionTable:
        if not results:
            raise UserError("no pairs to aggregate")
        comps = results[0].components
        offsets = sorted({o for r in results for o in r.offsets})
        col = {o: j for j, o in enumerate(offsets)}
        num = np.zeros((len(comps), len(offsets)))
        den = np.zeros(len(offsets))
        count = np.zeros(len(offsets), dtype=int)
        for r in results:
            idx = [col[o] for o in r.offsets]
            num[:, idx] += r.raw
            den[idx] += r.gap
            count[idx] += 1
        with np.errstate(divide="ignore", invalid="ignore"):
            eff = np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)
        return cls(comps, tuple(offsets), eff, tuple(int(c) for c in count))

    def to_dict(self) -> dict:
        return {
            "offsets": list(self.offsets),
            "n_pairs": list(self.n_pairs),
            "effects": {c: [_num(v) for v in row] for c, row in zip(self.components, self.effects)},
        }
