"""``iclft export lm-eval``: iclft's cells as an lm-evaluation-harness task package."""

from __future__ import annotations

from pathlib import Path

import typer

from iclft.cli.eval import (
    DEMO_SETS,
    DEMOS,
    FORCE,
    MAX_NEW_TOKENS,
    PROTOCOL,
    SCORING,
    SEED,
    SHOTS,
    TASK,
    VARIANT,
    N,
    spec_from_options,
)

app = typer.Typer(help="Export iclft's tasks to other tools.", no_args_is_help=True)


@app.command("lm-eval")
def lm_eval_command(
    task: str = TASK,
    variant: str = VARIANT,
    shots: str = SHOTS,
    n: int = N,
    seed: int = SEED,
    demos: str = DEMOS,
    scoring: str = SCORING,
    protocol: str = PROTOCOL,
    demo_sets: int = DEMO_SETS,
    max_new_tokens: int = MAX_NEW_TOKENS,
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="Directory of the task package (an earlier export there is replaced whole).",
    ),
    force: bool = FORCE,
) -> None:
    """Write the cells `iclft eval` would evaluate with these options as lm-evaluation-harness
    tasks (same prompts, request types and scoring); run them with
    `lm_eval --include_path DIR --tasks iclft`. The package is plain Python: lm-eval's
    environment needs no iclft."""
    from iclft.export import GROUP, export_lm_eval

    spec = spec_from_options(
        task, variant, shots, n, seed, demos, scoring, protocol, demo_sets, max_new_tokens
    )
    names = export_lm_eval(spec, output, force=force)
    typer.echo(f"{len(names)} lm-eval tasks in {output}; run them with:")
    typer.echo(
        f"  lm_eval --model hf --model_args pretrained=MODEL --include_path {output} "
        f"--tasks {GROUP} --log_samples --output_path OUT"
    )
