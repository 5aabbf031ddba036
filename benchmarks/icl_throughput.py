"""ICL evaluation throughput: plain ``model.generate`` per prompt vs the iclft engine.

Runs the same prompts two ways in one process and prints items/s, the speed-up, tokens/s, the
share of the machine's measured fp32 matmul peak, and whether predictions are identical.
The last line is one JSON object with ``speedup_shared``, ``speedup_per_query`` and
``identical_predictions``.

    python benchmarks/icl_throughput.py [--model smollm2-135m] [--n 4] [--tasks expression,boolean]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import StoppingCriteriaList

from iclft.icl.engine import Engine, NewlineStop
from iclft.icl.prompts import DemoPool, build_prompt
from iclft.models.loading import load_model
from iclft.tasks import get_task


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Measured fp32 GFLOP/s of a square matmul on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def make_prompts(tasks, shots, n, seed, mode):
    out = []
    for name in tasks:
        task = get_task(name)
        pool = DemoPool(task, seed, mode, max(shots))
        for k in shots:
            for v in ("clean", "misleading"):
                for i, q in enumerate(task.generate(v, n, seed)):
                    out.append((task, build_prompt(task, q, pool.demos(q, i, k), k)))
    return out


@torch.inference_mode()
def naive(model, tok, prompts, max_new, stop: str = "newline"):
    """One ``generate`` per prompt; ``stop="none"`` runs to ``max_new`` tokens like the
    paper's code, ``"newline"`` stops where the engine stops (the fair comparison)."""
    outs = []
    for _, p in prompts:
        enc = tok(p.text, return_tensors="pt")
        n = enc.input_ids.shape[1]
        crit = [NewlineStop(tok, n)] if stop == "newline" else []
        o = model.generate(
            **enc,
            max_new_tokens=max_new,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList(crit),
            pad_token_id=tok.pad_token_id,
        )
        outs.append(tok.decode(o[0, n:], skip_special_tokens=True))
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="expression,boolean")
    ap.add_argument("--shots", default="0,1,2,4,8,16")
    ap.add_argument("--n", type=int, default=4, help="items per (task, variant, shots) cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument(
        "--naive-stop",
        default="newline",
        choices=["newline", "none"],
        help="newline: naive stops where the engine stops (default, fair); none: it generates "
        "max-new-tokens tokens as the paper's code did (predictions are compared after parsing)",
    )
    args = ap.parse_args()

    peak = matmul_peak()
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad or True)
    tasks, shots = args.tasks.split(","), [int(s) for s in args.shots.split(",")]
    print(f"model {args.model}: {n_params / 1e6:.0f}M parameters, {lm.device}, {lm.dtype}")
    print(f"fp32 matmul peak measured: {peak:.1f} GFLOP/s; threads {torch.get_num_threads()}")
    print(f"naive generate stops at: {args.naive_stop}")

    summary = {}
    identical_all = True
    for mode in ("shared", "per-query"):
        prompts = make_prompts(tasks, shots, args.n, args.seed, mode)
        ntok = sum(len(tok(p.text)["input_ids"]) for _, p in prompts)
        t0 = time.perf_counter()
        base = naive(model, tok, prompts, args.max_new_tokens, args.naive_stop)
        t_naive = time.perf_counter() - t0
        eng = Engine(model, tok, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        t0 = time.perf_counter()
        fast = eng.generate([p.text for _, p in prompts], [p.prefix for _, p in prompts])
        t_eng = time.perf_counter() - t0
        same_pred = [t.parse(a) == t.parse(b) for (t, _), a, b in zip(prompts, base, fast)]
        same_text = sum(a == b for a, b in zip(base, fast))
        identical = all(same_pred)
        identical_all &= identical
        computed = eng.stats.prefix_tokens + eng.stats.suffix_tokens + eng.stats.padded_tokens
        speed = t_naive / t_eng
        n = len(prompts)
        print(f"\n[{mode}] {n} prompts, {ntok} prompt tokens ({ntok / n:.0f} per prompt)")
        for name, t, toks in (("naive generate", t_naive, ntok), ("engine", t_eng, computed)):
            tps = toks / t
            frac = 2 * n_params * tps / (peak * 1e9)
            print(
                f"  {name:15s} {n / t:7.2f} items/s  {t:7.1f} s  prompt tokens/s {ntok / t:8.0f}"
                f"  computed tokens/s {tps:7.0f} ({frac:.0%} of matmul peak)"
            )
        print(
            f"  speed-up {speed:.2f}x; predictions identical {sum(same_pred)}/{n}, "
            f"raw outputs identical {same_text}/{n}; engine stats {eng.stats.__dict__}"
        )
        summary[mode] = speed
    print(
        json.dumps(
            {
                "speedup_shared": round(summary["shared"], 2),
                "speedup_per_query": round(summary["per-query"], 2),
                "identical_predictions": identical_all,
            }
        )
    )


if __name__ == "__main__":
    main()
