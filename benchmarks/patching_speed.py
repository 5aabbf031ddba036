"""How fast is exact patching batched, and attribution patching, against the naive loop?

On ``smollm2-135m`` (30 layers x 9 heads: 270 heads, 30 MLPs, 30 residual streams), one task,
zero-shot pairs, every component patched at the query positions, in one run:

* naive:     exact patching, one patched forward per component (``batch_size=1, reuse=False``)
* batched:   exact patching, ``--batch-size`` patches per forward, reusing the corrupt run's
             prefix key/value cache and residual stream (``reuse=True``)
* batched without reuse (``--breakdown``): batching alone
* attribution: one clean forward, one corrupt forward, one backward

and prints the speed-ups (targets: batched >= 3x, attribution >= 30x), the largest difference
between batched and naive effects (they must agree), and how well attribution ranks components
like exact patching does: Spearman correlation of the mean normalised effects of heads and MLPs,
and the overlap of the two top-10 circuits. Every component is timed; nothing is extrapolated.

    python benchmarks/patching_speed.py [--task parity] [--pairs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from iclft.analysis.circuits import EffectTable, circuit
from iclft.analysis.pairs import make_pairs
from iclft.analysis.patching import (
    attribution_patching,
    encode_pair,
    exact_patching,
    tokenizes_alike,
)
from iclft.models import load_model
from iclft.models.anatomy import anatomy


def _timed(fn, pairs):
    t0 = time.perf_counter()
    results = [fn(p) for p in pairs]
    return time.perf_counter() - t0, EffectTable.from_pairs(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="parity")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--positions", default="query", choices=["query", "last", "all"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--breakdown", action="store_true", help="also time batching without reuse")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model, device="auto", dtype="float32")
    an = anatomy(lm.model)
    texts = make_pairs(
        args.task, args.pairs, seed=args.seed, same_length=tokenizes_alike(lm.tokenizer)
    )
    pairs = [encode_pair(lm.tokenizer, p) for p in texts]
    comps = an.components(("head", "mlp", "resid"))
    print(
        f"{args.model} on {lm.device} ({torch.get_num_threads()} threads), task {args.task}, "
        f"{len(pairs)} pairs of {[p.length for p in pairs]} tokens, {len(comps)} components, "
        f"positions={args.positions}"
    )
    exact_patching(an, pairs[0], comps[:2], batch_size=1, reuse=False)  # warm-up

    pos = args.positions
    t_naive, naive = _timed(
        lambda p: exact_patching(an, p, comps, positions=pos, batch_size=1, reuse=False), pairs
    )
    t_batch, batched = _timed(
        lambda p: exact_patching(an, p, comps, positions=pos, batch_size=args.batch_size), pairs
    )
    t_plain = None
    if args.breakdown:
        t_plain, _ = _timed(
            lambda p: exact_patching(
                an, p, comps, positions=pos, batch_size=args.batch_size, reuse=False
            ),
            pairs,
        )
    t_attr, attr = _timed(lambda p: attribution_patching(an, p, comps, positions=pos), pairs)

    keep = [i for i, c in enumerate(comps) if c.kind in ("head", "mlp")]
    names = [comps[i].name for i in keep]
    e_exact, e_attr = naive.effects()[keep], attr.effects()[keep]
    rho = float(spearmanr(e_attr, e_exact).statistic)
    top_exact = set(circuit(e_exact, names, top_k=10))
    top_attr = set(circuit(e_attr, names, top_k=10))
    out = {
        "model": args.model,
        "task": args.task,
        "pairs": len(pairs),
        "tokens": [p.length for p in pairs],
        "components": len(comps),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "naive_s": round(t_naive, 2),
        "batched_s": round(t_batch, 2),
        "batched_no_reuse_s": None if t_plain is None else round(t_plain, 2),
        "attribution_s": round(t_attr, 3),
        "speedup_batched": round(t_naive / t_batch, 2),
        "speedup_batched_no_reuse": None if t_plain is None else round(t_naive / t_plain, 2),
        "speedup_attribution": round(t_naive / t_attr, 1),
        "max_abs_diff_batched_vs_naive": float(np.abs(batched.raw - naive.raw).max()),
        "spearman_attribution_vs_exact": round(rho, 3),
        "top10_overlap": len(top_exact & top_attr),
        "mean_gap": float(naive.gap.mean()),
    }
    print(f"naive loop (1 patch/forward) : {t_naive:8.2f} s")
    if t_plain is not None:
        print(
            f"batched, no reuse            : {t_plain:8.2f} s   "
            f"({out['speedup_batched_no_reuse']}x)"
        )
    print(
        f"batched + reuse              : {t_batch:8.2f} s   "
        f"({out['speedup_batched']}x, target >= 3x)"
    )
    print(
        f"attribution                  : {t_attr:8.3f} s   "
        f"({out['speedup_attribution']}x, target >= 30x)"
    )
    print(f"batched vs naive max |diff|  : {out['max_abs_diff_batched_vs_naive']:.2e}")
    print(f"Spearman(attribution, exact) : {rho:.3f} over {len(keep)} heads and MLPs")
    print(f"top-10 overlap               : {out['top10_overlap']}/10")
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
