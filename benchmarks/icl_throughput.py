"""ICL evaluation throughput: plain ``model.generate`` per prompt vs the iclft engine.

Runs the same prompts in one process the naive way and with the engine, and prints items/s,
the speed-up, tokens/s, the prefill efficiency (tokens computed per second times the dense
FLOPs a token costs, :func:`dense_flops_per_token`, as a share of the machine's fp32 matmul
peak measured here; the time includes decoding), and whether predictions are identical.
The naive way is one ``model.generate`` call per prompt, run twice:

* ``paper``: as the paper's code does, a fixed ``--max-new-tokens`` continuation with no stop;
* ``newline``: stopped at the first newline, where the engine stops (equal decoding work, so
  this ratio isolates what prefix caching and batching buy).

Predictions are compared under iclft's scoring protocol: each continuation is cut after its
first newline, then parsed by the task (the engine's continuations already end there).
The last line is one JSON object: ``speedup_shared`` and ``speedup_per_query`` (against the
paper's way, as the issue defines the target), the same against the newline-stopped way, and
``identical_predictions``.

    python benchmarks/icl_throughput.py [--model smollm2-135m] [--n 16] [--tasks expression,boolean]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import StoppingCriteriaList

from iclft.icl.decode import NewlineStop
from iclft.icl.engine import Engine
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


def dense_flops_per_token(model) -> float:
    """FLOPs of the matmuls every token passes through: 2 x the weights of the blocks' linear
    layers (not the embedding lookup, not the output layer, which the engine runs only where
    it needs logits, and not the attention scores)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    linear = (torch.nn.Linear, Conv1D)
    return 2.0 * sum(
        m.weight.numel() for m in model.modules() if isinstance(m, linear) and m is not head
    )


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
def naive(model, tok, prompts, max_new, stop: str):
    """One ``generate`` per prompt; ``stop="paper"`` runs to ``max_new`` tokens like the
    paper's code, ``"newline"`` stops where the engine stops."""
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


def first_line(text: str) -> str:
    """A continuation as iclft scores it: up to and including its first newline."""
    i = text.find("\n")
    return text if i < 0 else text[: i + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="expression,boolean")
    ap.add_argument("--shots", default="0,1,2,4,8,16")
    ap.add_argument(
        "--n",
        type=int,
        default=16,
        help="items per (task, variant, shots) cell (16, as the demo; the shared prefixes are "
        "amortised over more items as n grows; --n 4 runs in a quarter of the ~25 minutes)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument(
        "--naive",
        default="paper,newline",
        help="naive ways to time: paper (fixed-length continuation, as the paper's code), "
        "newline (stopped at the first newline, as the engine)",
    )
    args = ap.parse_args()

    peak = matmul_peak()
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    dense = dense_flops_per_token(model)
    tasks, shots = args.tasks.split(","), [int(s) for s in args.shots.split(",")]
    print(f"model {args.model}: {n_params / 1e6:.0f}M parameters, {lm.device}, {lm.dtype}")
    print(f"fp32 matmul peak measured: {peak:.1f} GFLOP/s; threads {torch.get_num_threads()}")
    print(f"dense FLOPs per token {dense / 1e6:.0f}M (the blocks' matmuls; attention not counted)")
    ways = args.naive.split(",")
    bad = [w for w in ways if w not in ("paper", "newline")]
    if bad:
        ap.error(f"--naive: unknown way {bad[0]!r} (allowed: paper, newline)")

    # warm-up (thread pools, first-call allocations) for both ways, outside the timings
    warm = make_prompts(tasks[:1], [1], 1, args.seed + 1, "shared")
    naive(model, tok, warm, 2, "paper")
    Engine(model, tok, max_new_tokens=2).generate([p.text for _, p in warm])

    summary: dict[str, float] = {}
    identical_all = True
    for mode in ("shared", "per-query"):
        prompts = make_prompts(tasks, shots, args.n, args.seed, mode)
        n = len(prompts)
        ntok = sum(len(tok(p.text)["input_ids"]) for _, p in prompts)
        eng = Engine(model, tok, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        t0 = time.perf_counter()
        fast = eng.generate([p.text for _, p in prompts], [p.prefix for _, p in prompts])
        t_eng = time.perf_counter() - t0
        fast = [first_line(f) for f in fast]
        computed = eng.stats.prefix_tokens + eng.stats.suffix_tokens + eng.stats.padded_tokens
        print(f"\n[{mode}] {n} prompts, {ntok} prompt tokens ({ntok / n:.0f} per prompt)")
        rows = [("engine", t_eng, computed)]
        for way in ways:
            t0 = time.perf_counter()
            base = naive(model, tok, prompts, args.max_new_tokens, way)
            t_naive = time.perf_counter() - t0
            rows.insert(-1, (f"naive ({way})", t_naive, ntok))
            base = [first_line(b) for b in base]
            same_pred = sum(t.parse(a) == t.parse(b) for (t, _), a, b in zip(prompts, base, fast))
            same_text = sum(a == b for a, b in zip(base, fast))
            identical_all &= same_pred == n
            summary[f"{mode}/{way}"] = t_naive / t_eng
            print(
                f"  vs naive ({way}): speed-up {t_naive / t_eng:.2f}x; predictions identical "
                f"{same_pred}/{n}, continuations identical up to the first newline {same_text}/{n}"
            )
        for name, t, toks in rows:
            tps = toks / t
            frac = dense * tps / (peak * 1e9)
            print(
                f"  {name:17s} {n / t:7.2f} items/s  {t:7.1f} s  prompt tokens/s {ntok / t:8.0f}"
                f"  computed tokens/s {tps:7.0f} (prefill efficiency {frac:.0%} of matmul peak)"
            )
        print(f"  engine stats {eng.stats.__dict__}")
    out: dict[str, object] = {}
    for mode, key in (("shared", "speedup_shared"), ("per-query", "speedup_per_query")):
        if f"{mode}/paper" in summary:
            out[key] = round(summary[f"{mode}/paper"], 2)
        if f"{mode}/newline" in summary:
            out[f"{key}_newline_stop"] = round(summary[f"{mode}/newline"], 2)
    out["identical_predictions"] = identical_all
    print(json.dumps(out))


if __name__ == "__main__":
    main()
