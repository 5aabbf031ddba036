"""``iclft eval``: evaluate a model zero-shot and with k demonstrations."""

from __future__ import annotations

from pathlib import Path

import typer

from iclft.icl.settings import BATCH_SIZE
from iclft.models.registry import alias_names
from iclft.tasks import parse_task_list, parse_variant_list

#: the options that choose the cells, shared by ``iclft eval`` and ``iclft export lm-eval`` (the
#: same command line selects the same items); the evaluation settings are generated from
#: :class:`~iclft.icl.settings.EvalSettings`'s fields (:data:`EVAL_FLAGS` names the flags that
#: are not ``--field-name``)
TASK = typer.Option(..., "--task", "-t", help="Task(s), comma-separated, or 'all'.")
VARIANT = typer.Option("clean,misleading", "--variant", "-v", help="clean, misleading.")
SHOTS = typer.Option("0", "--shots", "-k", help="Shot counts, e.g. 0,1,2,4,8,16,32.")
SEED = typer.Option(0, "--seed", "-s", help="Seed of the items and demonstrations.")
EVAL_FLAGS = {"n": ["-n", "--n"]}
#: ``--force`` of every command that writes an output directory
FORCE = typer.Option(
    False,
    "--force",
    help="Write into a non-empty directory that another command (or not iclft) wrote: its "
    "contents are moved aside to DIR.replaced-N first, never deleted.",
)


def spec_from_options(task: str, variant: str, shots: str, seed: int, settings: dict):
    """The validated :class:`~iclft.icl.settings.EvalSpec` of the cell options and the
    evaluation settings given (options left out take the settings' defaults)."""
    from iclft.cli.fields import flag_names, given_values
    from iclft.icl.evaluate import parse_int_list, unique
    from iclft.icl.settings import EvalSettings, EvalSpec
    from iclft.validation import build

    values = {
        "tasks": tuple(parse_task_list(task)),
        "variants": unique(parse_variant_list(variant)),
        "shots": unique(parse_int_list(shots, "shots")),
        "seed": seed,
        **given_values(EvalSettings, settings),
    }
    return build(EvalSpec, values, flag_names(EvalSpec, {**EVAL_FLAGS, **_CELL_FLAGS}))


#: the cell options' flags, for messages about a bad value
_CELL_FLAGS = {"tasks": ["--task"], "variants": ["--variant"], "shots": ["--shots"]}


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
    seed: int = SEED,
    batch_size: str = typer.Option(
        str(BATCH_SIZE),
        "--batch-size",
        "-b",
        help="Rows per forward, or auto: the largest that fits, halving on out-of-memory (the "
        "size used is in the manifest).",
    ),
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
    **settings,
) -> None:
    """Score a model on tasks with k in-context demonstrations; writes results.jsonl,
    predictions.jsonl and manifest.json into the output directory."""
    from rich.console import Console
    from rich.table import Table

    from iclft.icl.evaluate import run_eval

    spec = spec_from_options(task, variant, shots, seed, settings)
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


def _register() -> None:
    from iclft.cli.fields import with_field_options
    from iclft.icl.settings import EvalSettings

    with_field_options(eval_command, EvalSettings, EVAL_FLAGS)


_register()
