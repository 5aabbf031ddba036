"""A synthetic run directory in the format ``iclft run`` writes, for the report tests.

The numbers are made up but shaped like the paper's: ICL climbs with k on clean items and
falls on misleading ones (answering the shortcut), fine-tuning stays near the baseline. Each
fine-tuning run trains FT_STEPS steps of FT_BATCH examples; its final model's rows carry that
``step``, and each of ``checkpoints`` adds rows with its step and checkpoint directory.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from iclft.icl.metrics import wilson_interval
from iclft.records import CURVE_FIELDS, CellResult, arms, is_finetune
from iclft.tasks import get_task

FT_METHODS = tuple(m for m in arms() if is_finetune(m))
FT_STEPS, FT_BATCH = 20, 16


def result_row(
    model: str,
    task: str,
    variant: str,
    method: str,
    shots: int,
    seed: int,
    correct: int,
    n: int,
    **extra,
) -> dict:
    """One results.jsonl row (:class:`iclft.records.CellResult` as JSON) with the Wilson
    interval computed from ``correct`` and ``n``; ``extra`` sets further fields."""
    lo, hi = wilson_interval(correct, n)
    fields = dict(
        scoring="generate",
        ci_low=lo,
        ci_high=hi,
        substring_accuracy=min(1.0, correct / n + 0.05),
        shortcut_rate=0.5,
        parse_failures=0,
    )
    return CellResult(
        model=model, task=task, variant=variant, method=method, shots=shots, seed=seed, n=n,
        correct=correct, accuracy=correct / n, **{**fields, **extra},
    ).to_json()  # fmt: skip


def shortcut_only_accuracy(task: str, variant: str) -> float | None:
    """What evaluation records for a shortcut-only model on a cell of ``task``."""
    return 1.0 if variant == "clean" else get_task(task).shortcut_accuracy_misleading


def _p(method: str, variant: str, shots: int, task_i: int, step: int = FT_STEPS):
    """(accuracy, shortcut rate) the synthetic model has in a setting (fine-tuned: at a step)."""
    if method == "icl":
        gain = 0.7 * (1 - math.exp(-shots / 3)) - 0.05 * task_i
        if variant == "clean":
            return 0.1 + gain, 0.1 + gain
        return max(0.02, 0.1 - gain / 4), 0.2 + gain
    if method == "baseline":
        return 0.1, 0.1
    return 0.1 + (0.05 + 0.03 * FT_METHODS.index(method)) * step / FT_STEPS, 0.2


def write_run(
    root: Path,
    *,
    models: Sequence[str] = ("smollm2-135m",),
    tasks: Sequence[str] = ("expression", "boolean"),
    variants: Sequence[str] = ("clean", "misleading"),
    methods: Sequence[str] = ("baseline", "icl", *FT_METHODS),
    shots: Sequence[int] = (1, 2, 4, 8),
    seeds: Sequence[int] = (0,),
    n: int = 40,
    curves: bool = True,
    checkpoints: Sequence[int] = (),
    analysis: bool = True,
    shortcut_only: bool = True,
    rng_seed: int = 0,
) -> Path:
    """Write config.json, manifest.json, results.jsonl, finetune/*/*/{curves.csv,
    manifest.json} and analysis/** into ``root``; return ``root``. With ``shortcut_only`` the
    rows carry ``shortcut_only_accuracy`` as evaluation writes it (1 on clean items, the
    task's declared value on misleading ones); without it they look like older runs."""
    rng = np.random.default_rng(rng_seed)
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "models": list(models),
        "tasks": list(tasks),
        "variants": list(variants),
        "methods": list(methods),
        "shots": [0, *shots],
        "seeds": list(seeds),
        "n": n,
        "future_key": {"nested": True},
    }
    (root / "config.json").write_text(json.dumps(config))
    manifest = {
        "iclft_version": "0.1.0",
        "git_revision": "abc123",
        "packages": {"torch": "2.13.0", "transformers": "5.23.0"},
        "timings": {"baseline_s": 1.5, "icl_s": 12.25, "finetune": {"ft-full_s": 30.0}},
        "device": "cpu",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    rows = []
    for model in models:
        for ti, task in enumerate(tasks):
            for variant in variants:
                for seed in seeds:
                    for method in methods:
                        ks = shots if method == "icl" else (0,)
                        ft = method.startswith("ft-")
                        steps = [*checkpoints, FT_STEPS] if ft else [FT_STEPS]
                        for k in ks:
                            for step in steps:
                                p, shortcut = _p(method, variant, k, ti, step)
                                correct = int(rng.binomial(n, min(max(p, 0.0), 1.0)))
                                extra: dict = {"shortcut_rate": min(1.0, shortcut)}
                                if shortcut_only:
                                    extra["shortcut_only_accuracy"] = shortcut_only_accuracy(
                                        task, variant
                                    )
                                if ft:
                                    d = f"finetune/{model.replace('/', '__')}/{method}"
                                    extra["step"] = step
                                    extra["train_examples"] = step * FT_BATCH
                                    extra["ft_dir"] = d
                                    extra["checkpoint"] = (
                                        None
                                        if step == FT_STEPS
                                        else f"{d}/checkpoints/checkpoint-{step}"
                                    )
                                rows.append(
                                    result_row(
                                        model, task, variant, method, k, seed, correct, n, **extra
                                    )
                                )
    with open(root / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if curves:
        for model in models:
            for method in (m for m in methods if m.startswith("ft-")):
                d = root / "finetune" / model.replace("/", "__") / method
                d.mkdir(parents=True)
                with open(d / "curves.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(CURVE_FIELDS)
                    for step in (0, 5, 10, FT_STEPS):
                        loss = "" if step == 0 else f"{2.5 * math.exp(-step / 10):.4f}"
                        lr = "" if step == 0 else "1e-05"
                        for task in tasks:
                            for variant in variants:
                                c = int(rng.integers(2, 8))
                                w.writerow(
                                    [step, step * FT_BATCH, loss, lr, task, variant, c / 20, c, 20]
                                )
                (d / "manifest.json").write_text(
                    json.dumps(
                        {
                            "final_loss": 0.34,
                            "steps": FT_STEPS,
                            "examples_per_step": FT_BATCH,
                            "method": method,
                            "model": {"spec": model},
                            "timings": {"train_seconds": 12.5},
                        }
                    )
                )
    if analysis:
        circ = root / "analysis" / "circuits" / tasks[0]
        circ.mkdir(parents=True)
        from matplotlib.image import imsave

        for name in ("heatmap_base", "heatmap_icl"):  # stand-ins: 6 layers x 4 heads
            imsave(circ / f"{name}.png", rng.normal(size=(6, 4)), cmap="RdBu_r")
        (circ / "circuits.json").write_text(
            json.dumps(
                {
                    "task": tasks[0],
                    "summary": {"n_pairs": 12, "faithfulness": 0.81, "ignored": [1, 2]},
                    "settings": {
                        "base": {
                            "shots": 0,
                            "identified": False,
                            "gap_check": {"gap_mean": 0.1, "gap_ci_low": -0.2, "gap_ci_high": 0.4},
                            "attribution_check": None,
                        },
                        "icl": {
                            "shots": 2,
                            "identified": True,
                            "gap_check": {"gap_mean": 1.5, "gap_ci_low": 1.1, "gap_ci_high": 1.9},
                            "circuit_faithfulness": 0.7,
                            "attribution_check": {
                                "spearman": {"value": 0.93, "ci_low": 0.8, "ci_high": 0.97},
                                "top_k_overlap": 8,
                                "top_k": 10,
                                "n_remeasured": 20,
                                "exact_over_attribution_top_k": 1.8,
                            },
                        },
                    },
                    "shifts": [
                        {
                            "from": "icl",
                            "to": "ft",
                            "status": "identified",
                            "jaccard_distance": {"value": 0.6, "ci_low": 0.4, "ci_high": 0.8},
                            "per_layer_cosine_distance": [],
                            "noise_floor": {
                                "all": {
                                    "jaccard_distance": {
                                        "floor": {"value": 0.45, "ci_low": 0.2, "ci_high": 0.7},
                                        "shift_over_floor": 1.333,
                                        "half_shift_over_floor": 1.1,
                                    }
                                }
                            },
                        },
                        {
                            "from": "base",
                            "to": "icl",
                            "status": "not identified",
                            "not_identified": ["base"],
                            "jaccard_distance": None,
                        },
                    ],
                }
            )
        )
    return root
