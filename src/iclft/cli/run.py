"""``iclft run CONFIG -o RUN_DIR`` and ``iclft demo -o DIR``: the whole grid, then the report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from rich.console import Console


def _run_and_report(cfg, output: Path, force: bool, cache: Path | None = None) -> None:
    from iclft.distributed import is_main
    from iclft.report import build_report
    from iclft.run.runner import run_experiment
    from iclft.store import dir_lock

    console = Console(stderr=True)
    t0 = time.time()
    if not is_main():  # under accelerate launch: a worker; rank 0 locks, writes and reports
        run_experiment(cfg, output, force=force, cache=cache)
        return
    with dir_lock(output):  # the run and its report: one writer throughout
        summary = run_experiment(cfg, output, force=force, cache=cache)
        paths = build_report(output)
    console.print(
        f"[bold green]done[/] in {time.time() - t0:.0f} s: {summary.ran} stages run, "
        f"{summary.skipped} already complete"
    )
    console.print(f"results: {output / 'results.jsonl'}")
    console.print(f"report:  {paths.html}  (and {paths.markdown})")


def _dry_run(cfg, output: Path | None) -> None:
    """Print the plan: every stage, what it would load, and each model's family (read from its
    config.json where that needs no download). Nothing is loaded or written."""
    from rich.table import Table

    from iclft.models.anatomy import attention_for, family_for
    from iclft.models.loading import peek_model_type
    from iclft.run.plan import plan
    from iclft.run.stages import stage_loads

    stages = plan(cfg)
    out = Console()
    models = Table(title=f"models of {cfg.name}")
    for col in ("model", "family", "--attn auto"):
        models.add_column(col)
    for spec in cfg.models:
        kind = peek_model_type(spec)
        if kind is None:
            models.add_row(spec, "not known here (checked when config.json is fetched)", "")
        else:
            models.add_row(spec, family_for(kind).name, attention_for(kind))
    out.print(models)
    table = Table(title=f"{len(stages)} stages (dry run: nothing is loaded or written)")
    for col in ("stage", "kind", "loads"):
        table.add_column(col, overflow="fold")
    for stage in stages:
        loads = stage_loads(cfg, stage, output or Path("RUN_DIR"))
        table.add_row(stage.key, stage.label, ", ".join(loads))
    out.print(table)


def run_command(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Run directory (required unless --dry-run)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Start over in a directory that holds a different config or another command's "
        "output: its contents are moved aside to DIR.replaced-N first, never deleted.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate the config and print the plan; load and write nothing."
    ),
    cache: Path = typer.Option(
        None,
        "--cache",
        help="SQLite file of cached responses (opt-in), shared across runs and processes: "
        "evaluations answered before by the same weights and settings are not recomputed.",
    ),
) -> None:
    """Run an experiment grid (baseline, ICL sweep, fine-tuning, analysis) and write the report.
    Running the same command again resumes: completed stages are skipped."""
    from iclft.errors import UserError
    from iclft.run.config import load_experiment

    cfg = load_experiment(config)
    if dry_run:
        _dry_run(cfg, output)
        return
    if output is None:
        raise UserError("iclft run needs -o/--output RUN_DIR (or --dry-run to only print the plan)")
    _run_and_report(cfg, output, force, cache)


def demo_command(
    output: Path = typer.Option(Path("runs/demo"), "-o", "--output", help="Run directory."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Start over if the directory holds another config or output (moved aside to "
        "DIR.replaced-N, never deleted).",
    ),
) -> None:
    """The demo: configs/demo.yaml on the embedded smollm2-135m on CPU, then the report."""
    from iclft.run.config import load_experiment, packaged_config

    path = packaged_config("demo")
    logging.getLogger(__name__).info("demo: %s -> %s", path, output)
    _run_and_report(load_experiment(path), output, force)
