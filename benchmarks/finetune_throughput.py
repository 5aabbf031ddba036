"""Fine-tuning throughput: full, LoRA, K/V and layer-causal on one model, same batch and length.

Each method runs in its own subprocess (so peak memory is its own) for a few optimizer steps on
the same training batch of task texts padded to one length; it prints step time, training
tokens/s, peak memory, and the step time of layer-causal relative to vanilla with the same
parameter selection. The last line is one JSON object.

    python benchmarks/finetune_throughput.py [--model smollm2-135m] [--batch 8] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = [
    ("full", "full", False),
    ("lora", "lora", False),
    ("kv", "kv", False),
    ("layer-causal (kv)", "kv", True),
    ("layer-causal (full)", "full", True),
]


def worker(args) -> dict:
    import torch

    from iclft.finetune.config import make_config
    from iclft.finetune.data import TokenizedTexts, task_texts
    from iclft.finetune.layer_causal import layer_causal_loss
    from iclft.finetune.methods import trainable_count
    from iclft.models.loading import load_model

    name, selection, causal = VARIANTS[args.worker]
    lm = load_model(args.model, device=args.device)
    model, tok = lm.model, lm.tokenizer
    model.train()
    cfg = make_config(
        model=args.model, method=selection if not causal else "layer-causal", params=selection
    )
    model = cfg.strategy.select(model, cfg, cfg.seed)
    texts = task_texts(["boolean", "expression"], args.batch, seed=0)[: args.batch]
    rows = TokenizedTexts(texts, tok, args.loss_on, max_length=args.length).rows
    pad = tok.pad_token_id
    ids = torch.full((args.batch, args.length), pad)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):  # same length for every method: pad to --length
        n = len(r["input_ids"])
        ids[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), 1
        labels[i, :n] = torch.tensor(r["labels"])
    ids, mask, labels = ids.to(lm.device), mask.to(lm.device), labels.to(lm.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        if causal:
            loss = layer_causal_loss(model, ids, mask, labels)
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    trainable, total = trainable_count(model)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if lm.device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "method": name,
        "step_seconds": dt,
        "tokens_per_second": int(mask.sum()) / dt,
        "peak_memory_mib": peak,
        "trainable": trainable,
        "total": total,
        "device": str(lm.device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=96)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--loss-on", default="target", choices=["target", "full"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return
    results = {}
    for i, (name, _, _) in enumerate(VARIANTS):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            str(i),
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--length",
            str(args.length),
            "--steps",
            str(args.steps),
            "--loss-on",
            args.loss_on,
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[name] = r
        print(
            f"{name:20s} step {r['step_seconds']:6.2f} s  {r['tokens_per_second']:7.0f} tok/s  "
            f"peak {r['peak_memory_mib']:7.0f} MiB  trainable {r['trainable']:,}/{r['total']:,}"
            f"  ({r['device']})",
            flush=True,
        )
    lc_kv = results["layer-causal (kv)"]["step_seconds"] / results["kv"]["step_seconds"]
    lc_full = results["layer-causal (full)"]["step_seconds"] / results["full"]["step_seconds"]
    print(
        f"layer-causal / vanilla step time: kv {lc_kv:.2f}x, full {lc_full:.2f}x "
        f"(loss on {args.loss_on}, batch {args.batch}, length {args.length})"
    )
    print(
        json.dumps(
            {
                "batch": args.batch,
                "length": args.length,
                "loss_on": args.loss_on,
                "layer_causal_over_vanilla_kv": round(lc_kv, 3),
                "layer_causal_over_vanilla_full": round(lc_full, 3),
                **{
                    k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                    for k, v in results.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
