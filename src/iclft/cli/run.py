"""``iclft run CONFIG -o RUN_DIR`` and ``iclft demo -o DIR``: the whole grid, then the report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console


def _run_and_report(cfg, output: Path, force: bool) -> None:
    from iclft.report import build_report
    from iclft.runner import run_experiment
    from iclft.store import dir_lock

    console = Console(stderr=True)
    t0 = time.time()
    with dir_lock(output):  # the run and its report: one writer throughout
        summary = run_experiment(cfg, output, force=force)
        paths = build_report(output)
    console.print(
        f"[bold green]done[/] in {time.time() - t0:.0f} s: {summary.ran} stages run, "
        f"{summary.skipped} already complete"
    )
    console.print(f"results: {output / 'results.jsonl'}")
    console.print(f"report:  {paths.html}  (and {paths.markdown})")


def run_command(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory."),
    force: bool = typer.Option(
        False, "--force", help="Start over in a directory that holds a different config."
    ),
) -> None:
    """Run an experiment grid (baseline, ICL sweep, fine-tuning, analysis) and write the report.
    Running the same command again resumes: completed stages are skipped."""
    from iclft.config import load_experiment

    _run_and_report(load_experiment(config), output, force)


def demo_command(
    output: Path = typer.Option(Path("runs/demo"), "-o", "--output", help="Run directory."),
    force: bool = typer.Option(False, "--force", help="Start over if the directory differs."),
) -> None:
    """The demo: configs/demo.yaml on the embedded smollm2-135m on CPU, then the report."""
    from iclft.config import load_experiment, packaged_config

    path = packaged_config("demo")
    Console(stderr=True).print(f"demo: {path} -> {output}")
    _run_and_report(load_experiment(path), output, force)
