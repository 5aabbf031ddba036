"""``iclft eval``: evaluate a model zero-shot and with k demonstrations."""

from __future__ import annotations

from pathlib import Path

import typer

from iclft.models.registry import alias_names
from iclft.tasks import parse_task_list, parse_variant_list

#: the options that choose items, demonstrations and scoring, shared by ``iclft eval`` and
#: ``iclft export lm-eval`` (the same command line selects the same items)
TASK = typer.Option(..., "--task", "-t", help="Task(s), comma-separated, or 'all'.")
VARIANT = typer.Option("clean,misleading", "--variant", "-v", help="clean, misleading.")
SHOTS = typer.Option("0", "--shots", "-k", help="Shot counts, e.g. 0,1,2,4,8,16,32.")
N = typer.Option(50, "-n", "--n", help="Test items per (task, variant).")
SEED = typer.Option(0, "--seed", "-s")
DEMOS = typer.Option("shared", "--demos", help="shared or per-query.")
SCORING = typer.Option("generate", "--scoring", help="generate, loglik or auto.")
PROTOCOL = typer.Option(
    "exact",
    "--protocol",
    help="exact (skip leading newlines, stop at the next, exact match) or paper (the seed "
    "code: each task's 1-3 token budget with no stop, target as a substring).",
)
DEMO_SETS = typer.Option(
    1,
    "--demo-sets",
    help="Independent demonstration sets per k-shot cell; with 2+, intervals are the "
    "crossed-design t over sets and items.",
)
MAX_NEW_TOKENS = typer.Option(10, "--max-new-tokens")
#: ``--force`` of every command that writes an output directory
FORCE = typer.Option(
    False,
    "--force",
    help="Write into a non-empty directory that another command (or not iclft) wrote: its "
    "contents are moved aside to DIR.replaced-N first, never deleted.",
)


def spec_from_options(
    task: str,
    variant: str,
    shots: str,
    n: int,
    seed: int,
    demos: str,
    scoring: str,
    protocol: str,
    demo_sets: int,
    max_new_tokens: int,
    *,
    heldout_n: int = 0,
    chat: str = "none",
):
    """The checked :class:`~iclft.icl.evaluate.EvalSpec` of the options above."""
    from iclft.icl.evaluate import EvalSpec, parse_int_list, unique

    return EvalSpec(
        tasks=tuple(parse_task_list(task)),
        variants=unique(parse_variant_list(variant)),
        shots=unique(parse_int_list(shots, "shots")),
        n=n,
        seed=seed,
        demos=demos,
        scoring=scoring,
        max_new_tokens=max_new_tokens,
        protocol=protocol,
        demo_sets=demo_sets,
        heldout_n=heldout_n,
        chat=chat,
    ).check()


def eval_command(
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help=f"Alias ({', '.join(alias_names())}), directory or hub id.",
    ),
    task: str = TASK,
    variant: str = VARIANT,
    shots: str = SHOTS,
    n: int = N,
    seed: int = SEED,
    demos: str = DEMOS,
    scoring: str = SCORING,
    protocol: str = PROTOCOL,
    demo_sets: int = DEMO_SETS,
    heldout_n: int = typer.Option(
        0,
        "--heldout-n",
        help="Held-out clean items per k-shot cell, on which `iclft report` chooses the best k.",
    ),
    chat_template: str = typer.Option(
        "none",
        "--chat-template",
        help="none (plain prompts), turns (each demonstration a user and an assistant turn) or "
        "single (one user turn) in the tokenizer's chat template, for instruction-tuned models.",
    ),
    batch_size: str = typer.Option(
        "16",
        "--batch-size",
        "-b",
        help="Rows per forward, or auto: the largest that fits, halving on out-of-memory (the "
        "size used is in the manifest).",
    ),
    max_new_tokens: int = MAX_NEW_TOKENS,
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    attn: str = typer.Option(
        "auto",
        "--attn",
        help="auto (sdpa where the model's family has it, else eager), sdpa, eager or "
        "flash_attention_2; the one used is in the manifest.",
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="Output directory: new, empty, or an earlier `iclft eval` output (replaced whole).",
    ),
    force: bool = FORCE,
    cache: Path = typer.Option(
        None,
        "--cache",
        help="SQLite file of cached responses (opt-in): requests answered before by the same "
        "weights, tokenizer and settings are not recomputed; hits and misses go in the manifest.",
    ),
) -> None:
    """Score a model on tasks with k in-context demonstrations; writes results.jsonl,
    predictions.jsonl and manifest.json into the output directory."""
    from rich.console import Console
    from rich.table import Table

    from iclft.icl.evaluate import run_eval

    spec = spec_from_options(
        task, variant, shots, n, seed, demos, scoring, protocol, demo_sets, max_new_tokens,
        heldout_n=heldout_n, chat=chat_template,
    )  # fmt: skip
    res = run_eval(
        spec,
        output,
        model=model,
        device=device,
        dtype=dtype,
        attn_implementation=attn,
        batch_size=batch_size,
        cache=cache,
        force=force,
    )
    from iclft.distributed import is_main

    if not is_main():  # under accelerate launch, rank 0 reports
        return
    table = Table(title=f"accuracy ({output})")
    cols = ("task", "variant", "shots", "accuracy", "95% CI", "sets", "substring", "shortcut")
    for col in cols:
        table.add_column(col)
    for r in res.results:
        sets = r.set_accuracies or []
        table.add_row(
            r.task,
            r.variant + (" (held-out)" if r.split == "heldout" else ""),
            r.shots_text,
            f"{r.accuracy:.3f}",
            f"[{r.ci_low:.2f}, {r.ci_high:.2f}]",
            f"{len(sets)}: {min(sets):.2f}–{max(sets):.2f}" if len(sets) > 1 else "1",
            f"{r.substring_accuracy:.3f}",
            f"{r.shortcut_rate:.3f}",
        )
    Console().print(table)
