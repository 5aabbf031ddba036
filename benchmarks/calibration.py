"""Calibration of the comparison test and the cell interval on synthetic crossed data of known
truth: size (false-positive rate at a true null, nominal 5%) and coverage, old against new,
with 3 and 5 demonstration sets; Holm's family-wise error over families of 144 true nulls.

    python benchmarks/calibration.py [--reps 2000] [--items 199] [--seed 0]

Data: ICL over S demonstration sets and a one-set setting (baseline or fine-tuned model) on the
same items; on the logit scale a set effect (sd ``--sd-set``), an item difficulty shared by
both settings (sd 1.0), a set-by-item interaction (0.5) and the other setting's own item noise
(0.7); answers are Bernoulli. The true accuracy of a setting is its mean over new items *and*
new sets (Gauss-Hermite quadrature); the one-set setting's logit mean is solved so that the
true difference is 0 (size) or 0.10 (coverage).

"old" is the test iclft used before the crossed-design t: the two-level paired bootstrap
(items resampled once for both sides, each side's sets resampled), its percentile interval
and p = 2 min(P*[d <= 0], P*[d >= 0]); and, for cells, the two-level percentile bootstrap
widened to the Wilson interval of the mean over items.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import optimize

from iclft.icl.compare import crossed_test
from iclft.icl.metrics import crossed_interval, resample_counts, two_level_means, wilson_interval
from iclft.stats import holm

SD_ITEM, SD_INT, SD_OWN = 1.0, 0.5, 0.7
GH_X, GH_W = np.polynomial.hermite_e.hermegauss(80)


def population(mu: float, sd: float) -> float:
    return float((GH_W / (1 + np.exp(-(mu + sd * GH_X)))).sum() / GH_W.sum())


def truths(mu_a: float, sd_set: float, diff: float) -> tuple[float, float, float]:
    """``(mu_b, true accuracy of ICL, true difference)``."""
    acc_a = population(mu_a, np.sqrt(sd_set**2 + SD_ITEM**2 + SD_INT**2))
    sd_b = np.sqrt(SD_ITEM**2 + SD_OWN**2)
    mu_b = optimize.brentq(lambda m: population(m, sd_b) - (acc_a - diff), -10, 10)
    return mu_b, acc_a, acc_a - population(mu_b, sd_b)


def draw(rng, reps, sets, n, mu_a, mu_b, sd_set):
    item = rng.normal(0, SD_ITEM, (reps, 1, n))
    la = mu_a + rng.normal(0, sd_set, (reps, sets, 1)) + item
    la = la + rng.normal(0, SD_INT, (reps, sets, n))
    lb = mu_b + item + rng.normal(0, SD_OWN, (reps, 1, n))
    a = (rng.random(la.shape) < 1 / (1 + np.exp(-la))).astype(float)
    b = (rng.random(lb.shape) < 1 / (1 + np.exp(-lb))).astype(float)
    return a, b


def old_test(a, b, rng, n_boot=1000):
    """``(p, low, high)`` per replication of the old two-level paired bootstrap."""
    out_p, out_lo, out_hi = [], [], []
    for x, y in zip(a, b):
        n = x.shape[1]
        v = resample_counts(n, n_boot, rng)
        wa = resample_counts(x.shape[0], n_boot, rng)
        wb = resample_counts(y.shape[0], n_boot, rng)
        d = (np.einsum("bs,sn,bn->b", wa, x, v) / (x.shape[0] * n)
             - np.einsum("bs,sn,bn->b", wb, y, v) / (y.shape[0] * n))  # fmt: skip
        out_p.append(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
        lo, hi = np.percentile(d, [2.5, 97.5])
        out_lo.append(lo)
        out_hi.append(hi)
    return np.array(out_p), np.array(out_lo), np.array(out_hi)


def old_cell(m, rng, n_boot=1000):
    lo, hi = [], []
    for x in m:
        means = two_level_means(x, n_boot, rng)
        blo, bhi = np.percentile(means, [2.5, 97.5])
        wlo, whi = wilson_interval(x.sum() / x.shape[0], x.shape[1])
        lo.append(min(blo, wlo))
        hi.append(max(bhi, whi))
    return np.array(lo), np.array(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--old-reps", type=int, default=1000, help="replications of the old (slow)")
    ap.add_argument("--items", type=int, default=199)
    ap.add_argument("--mu", type=float, default=0.5, help="ICL's logit mean")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.items
    print(f"{n} items, {args.reps} replications (old: {args.old_reps}), ICL logit mean {args.mu}")
    print("sd_set sets | size old  new | cover(0.10) old  new | cell cover old  new")
    for sd_set in (0.0, 0.5, 0.8, 1.0):
        for sets in (3, 5):
            mu_b, _, _ = truths(args.mu, sd_set, 0.0)
            a, b = draw(rng, args.reps, sets, n, args.mu, mu_b, sd_set)
            new_size = float((crossed_test(a, b).p_value < 0.05).mean())
            k = args.old_reps
            old_p, _, _ = old_test(a[:k], b[:k], rng)
            old_size = float((old_p < 0.05).mean())
            mu_b, acc_a, diff = truths(args.mu, sd_set, 0.10)
            a, b = draw(rng, args.reps, sets, n, args.mu, mu_b, sd_set)
            t = crossed_test(a, b)
            new_cov = float(((t.ci_low <= diff) & (diff <= t.ci_high)).mean())
            _, olo, ohi = old_test(a[:k], b[:k], rng)
            old_cov = float(((olo <= diff) & (diff <= ohi)).mean())
            lo, hi = crossed_interval(a)
            wl = np.array([wilson_interval(x.sum() / sets, n) for x in a])
            lo, hi = np.minimum(lo, wl[:, 0]), np.maximum(hi, wl[:, 1])  # as cells widen it
            cell_new = float(((lo <= acc_a) & (acc_a <= hi)).mean())
            clo, chi = old_cell(a[:k], rng)
            cell_old = float(((clo <= acc_a) & (acc_a <= chi)).mean())
            print(f"{sd_set:6.1f} {sets:4d} | {old_size:9.3f} {new_size:5.3f} | "
                  f"{old_cov:15.3f} {new_cov:5.3f} | {cell_old:14.3f} {cell_new:5.3f}")  # fmt: skip
    # Holm over families shaped like a run: 16 groups x (4 ICL k over 3 sets vs baseline and
    # a fine-tuned model, and the fine-tuned model vs baseline) = 144 true nulls
    fams, groups, m = 1000, 16, 60
    mu_b, _, _ = truths(0.3, 0.8, 0.0)
    item = rng.normal(0, SD_ITEM, (fams, groups, 1, 1, m))
    li = 0.3 + rng.normal(0, 0.8, (fams, groups, 4, 3, 1)) + item
    li = li + rng.normal(0, SD_INT, (fams, groups, 4, 3, m))
    icl = (rng.random(li.shape) < 1 / (1 + np.exp(-li))).astype(float)

    def one() -> np.ndarray:
        lb = mu_b + item[:, :, 0] + rng.normal(0, SD_OWN, (fams, groups, 1, m))
        return (rng.random(lb.shape) < 1 / (1 + np.exp(-lb))).astype(float)

    base, ft = one(), one()
    p = np.concatenate(
        [crossed_test(icl, base[:, :, None]).p_value, crossed_test(icl, ft[:, :, None]).p_value,
         crossed_test(ft, base).p_value[..., None]], axis=-1,
    ).reshape(fams, -1)  # fmt: skip
    fwer_raw = float((p < 0.05).any(axis=1).mean())
    fwer_holm = float((np.array([holm(f) for f in p]) < 0.05).any(axis=1).mean())
    print(f"family-wise error over {fams} families of {p.shape[1]} true nulls ({m} items): "
          f"unadjusted {fwer_raw:.3f}, Holm {fwer_holm:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
