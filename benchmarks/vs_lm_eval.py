"""iclft's engine against lm-evaluation-harness's HF backend, on the same prompts.

Users who would not use iclft would score ICL prompts with lm-evaluation-harness (``HFLM``).
This runs one sweep of k-shot prompts (shared demonstrations) through both, in one process, on
one loaded model, for the two request types:

* ``generate``: greedy, up to ``--max-new-tokens`` tokens, until a newline (lm-eval's
  ``generate_until`` with ``until=["\\n"]``; iclft's engine with ``stop="newline"``);
* ``loglik``: the total log-probability of each choice (``" " + choice``) after the prompt
  (lm-eval's ``loglikelihood``; iclft's ``Engine.loglik``), the choice with the highest
  one being the prediction.

It prints both times, the ratio, item-by-item agreement (generate: the task's parse of both
outputs; loglik: the chosen answer, and the largest log-probability difference), and the
prefill efficiency: tokens computed per second times the dense FLOPs a token costs, as a
share of the machine's fp32 matmul peak measured here (see ``icl_throughput.py``). For the
loglik request type it also times iclft's whole-sequence path (each candidate run with its
prompt, the path before shared-query scoring), so what sharing the query buys is visible.
The last line is JSON: ``speedup_generate``, ``speedup_loglik``, ``identical_generate``,
``identical_loglik``.

lm-evaluation-harness comes with the ``dev`` extra (``pip install -e '.[dev]'``).

    python benchmarks/vs_lm_eval.py [--model smollm2-135m] [--n 16] [--tasks boolean,parity]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
from icl_throughput import dense_flops_per_token, first_line, make_prompts, matmul_peak

from iclft.icl.engine import Engine
from iclft.models.loading import load_model
from iclft.tasks import get_task

WAYS = ("generate", "loglik")


def _lm_eval():
    """lm-evaluation-harness's HF backend and request type, or a clear exit if it is missing."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        sys.exit(
            f"lm-evaluation-harness is not installed ({e}); this benchmark compares against it: "
            "pip install -e '.[dev]' (or pip install lm_eval==0.4.13)"
        )
    import lm_eval

    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return HFLM, Instance, getattr(lm_eval, "__version__", "?")


def efficiency(tokens: int, seconds: float, flops_per_token: float, peak: float) -> str:
    tps = tokens / seconds
    return f"{tps:7.0f} tokens/s computed, {flops_per_token * tps / (peak * 1e9):.0%} of peak"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="boolean,parity", help="choice tasks (loglik needs them)")
    ap.add_argument("--shots", default="0,1,2,4,8,16")
    ap.add_argument("--n", type=int, default=16, help="items per (task, variant, shots) cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16, help="both iclft's and lm-eval's")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--ways", default=",".join(WAYS), help=f"request types ({', '.join(WAYS)})")
    args = ap.parse_args()
    ways = args.ways.split(",")
    bad = [w for w in ways if w not in WAYS]
    if bad:
        ap.error(f"--ways: unknown request type {bad[0]!r} (allowed: {', '.join(WAYS)})")
    tasks, shots = args.tasks.split(","), [int(s) for s in args.shots.split(",")]
    free = [t for t in tasks if not get_task(t).is_choice]
    if "loglik" in ways and free:
        ap.error(f"--tasks: {', '.join(free)} has no choices; loglik needs choice tasks")
    HFLM, Instance, lm_eval_version = _lm_eval()

    peak = matmul_peak()
    lm = load_model(args.model, dtype="float32")
    model, tok = lm.model, lm.tokenizer
    dense = dense_flops_per_token(model)
    head = 2 * model.get_output_embeddings().weight.numel()  # HF computes logits everywhere
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device=str(lm.device))
    print(f"model {args.model}: {lm.device}, {lm.dtype}; lm_eval {lm_eval_version} HFLM")
    print(f"fp32 matmul peak measured: {peak:.1f} GFLOP/s; threads {torch.get_num_threads()}")
    print(
        f"dense FLOPs per token {dense / 1e6:.0f}M (+{head / 1e6:.0f}M for the output layer "
        "where logits are computed; attention scores not counted)"
    )

    prompts = make_prompts(tasks, shots, args.n, args.seed, "shared")
    texts, hints = [p.text for _, p in prompts], [p.prefix for _, p in prompts]
    n = len(prompts)
    ntok = sum(len(tok(t)["input_ids"]) for t in texts)
    print(
        f"{n} prompts ({', '.join(tasks)}; shots {args.shots}; shared demonstrations), "
        f"{ntok} prompt tokens ({ntok / n:.0f} per prompt)"
    )

    # warm-up (thread pools, first-call allocations) for both, outside the timings
    warm = [p.text for _, p in make_prompts(tasks[:1], [1], 1, args.seed + 1, "shared")]
    Engine(model, tok, max_new_tokens=2).generate(warm)
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 2, "do_sample": False}
    hf.generate_until([Instance("generate_until", {}, (warm[0], gen_kwargs), 0)], True)

    out: dict[str, object] = {}
    if "generate" in ways:
        gen_kwargs = {"until": ["\n"], "max_gen_toks": args.max_new_tokens, "do_sample": False}
        reqs = [Instance("generate_until", {}, (t, gen_kwargs), i) for i, t in enumerate(texts)]
        t0 = time.perf_counter()
        theirs = hf.generate_until(reqs, disable_tqdm=True)
        t_hf = time.perf_counter() - t0
        eng = Engine(model, tok, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        t0 = time.perf_counter()
        ours = [first_line(x) for x in eng.generate(texts, hints)]
        t_us = time.perf_counter() - t0
        same = sum(t.parse(a) == t.parse(b) for (t, _), a, b in zip(prompts, ours, theirs))
        same_text = sum(a.rstrip("\n") == b for a, b in zip(ours, theirs))
        s = eng.stats
        computed = s.prefix_tokens + s.suffix_tokens + s.padded_tokens
        print(f"\n[generate] until newline, at most {args.max_new_tokens} tokens")
        print(f"  lm-eval HF  {t_hf:7.1f} s  {efficiency(ntok, t_hf, dense + head, peak)}")
        print(f"  iclft       {t_us:7.1f} s  {efficiency(computed, t_us, dense, peak)}")
        print(
            f"  ratio {t_hf / t_us:.2f}x; predictions identical {same}/{n}, "
            f"texts identical {same_text}/{n}"
        )
        print(f"  iclft stats {s.__dict__}")
        out["speedup_generate"] = round(t_hf / t_us, 2)
        out["identical_generate"] = same == n

    if "loglik" in ways:
        conts = [[" " + c for c in t.choices] for t, _ in prompts]
        reqs = [
            Instance("loglikelihood", {}, (t, c), i)
            for i, (t, cs) in enumerate(zip(texts, conts))
            for c in cs
        ]
        t0 = time.perf_counter()
        flat = [lp for lp, _ in hf.loglikelihood(reqs, disable_tqdm=True)]
        t_hf = time.perf_counter() - t0
        theirs, k = [], 0
        for cs in conts:
            theirs.append(flat[k : k + len(cs)])
            k += len(cs)
        rows = []
        for share in (True, False):
            eng = Engine(model, tok, batch_size=args.batch_size, share_queries=share)
            t0 = time.perf_counter()
            got = eng.loglik(texts, conts, hints)
            rows.append((time.perf_counter() - t0, got, eng.stats))
        (t_us, ours, s), (t_whole, whole, s_whole) = rows

        def pick(row):
            return max(range(len(row)), key=row.__getitem__)

        same = sum(pick(a) == pick(b) for a, b in zip(ours, theirs))
        diff = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
        diff_whole = max(abs(x - y) for a, b in zip(ours, whole) for x, y in zip(a, b))
        computed = s.prefix_tokens + s.suffix_tokens + s.padded_tokens + s.branch_tokens
        c_whole = s_whole.prefix_tokens + s_whole.suffix_tokens + s_whole.padded_tokens
        print(f"\n[loglik] {len(reqs)} requests ({len(reqs) / n:.0f} choices per prompt)")
        print(
            f"  lm-eval HF             {t_hf:7.1f} s  {efficiency(ntok, t_hf, dense + head, peak)}"
        )
        print(
            f"  iclft whole-sequence   {t_whole:7.1f} s  "
            f"{efficiency(c_whole, t_whole, dense, peak)}"
        )
        print(f"  iclft shared-query     {t_us:7.1f} s  {efficiency(computed, t_us, dense, peak)}")
        print(
            f"  ratio {t_hf / t_us:.2f}x (whole-sequence path {t_hf / t_whole:.2f}x; sharing "
            f"the query {t_whole / t_us:.2f}x); same choice {same}/{n}, max logprob diff "
            f"{diff:.1e} (vs iclft's whole-sequence path {diff_whole:.1e})"
        )
        print(f"  iclft stats {s.__dict__}")
        out["speedup_loglik"] = round(t_hf / t_us, 2)
        out["identical_loglik"] = same == n
        out["max_logprob_diff"] = float(f"{diff:.2g}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
