"""``iclft export lm-eval``: iclft's cells as an lm-evaluation-harness task package."""

from __future__ import annotations

from pathlib import Path

import typer

from iclft.cli.eval import EVAL_FLAGS, FORCE, SEED, SHOTS, TASK, VARIANT, spec_from_options

app = typer.Typer(help="Export iclft's tasks to other tools.", no_args_is_help=True)


def lm_eval_command(
    task: str = TASK,
    variant: str = VARIANT,
    shots: str = SHOTS,
    seed: int = SEED,
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="Directory of the task package (an earlier export there is replaced whole).",
    ),
    force: bool = FORCE,
    **settings,
) -> None:
    """Write the cells `iclft eval` would evaluate with these options as lm-evaluation-harness
    tasks (same prompts, request types and scoring); run them with
    `lm_eval --include_path DIR --tasks iclft`. The package is plain Python: lm-eval's
    environment needs no iclft."""
    from iclft.export import GROUP, export_lm_eval

    spec = spec_from_options(task, variant, shots, seed, settings)
    names = export_lm_eval(spec, output, force=force)
    typer.echo(f"{len(names)} lm-eval tasks in {output}; run them with:")
    typer.echo(
        f"  lm_eval --model hf --model_args pretrained=MODEL --include_path {output} "
        f"--tasks {GROUP} --log_samples --output_path OUT"
    )


def _register() -> None:
    from iclft.cli.fields import with_field_options
    from iclft.icl.settings import EvalSettings

    #: held-out items are for choosing k in a report, and lm-eval applies chat templates itself
    skip = ("heldout_n", "chat_template")
    app.command("lm-eval")(with_field_options(lm_eval_command, EvalSettings, EVAL_FLAGS, skip))


_register()
