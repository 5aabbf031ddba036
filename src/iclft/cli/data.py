"""``iclft tasks`` and ``iclft data ...``: list tasks, generate and show examples."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from iclft.tasks import get_task, parse_variant_list, registry
from iclft.tasks.io import FORMATS, write_examples

app = typer.Typer(help="Generate and inspect task examples.", no_args_is_help=True)
out = Console()
log = logging.getLogger(__name__)


def tasks() -> None:
    """List the tasks, with the implicit pattern each one hides."""
    table = Table(title="iclft tasks")
    table.add_column("task", style="bold")
    table.add_column("answer")
    table.add_column("implicit pattern (clean variant)")
    table.add_column("shortcut-only acc. (misleading)", justify="right")
    for name, cls in registry().items():
        kind = "/".join(cls.choices) if cls.choices else "free (integer)"
        sc = cls.shortcut_accuracy_misleading
        table.add_row(name, kind, cls.description, "?" if sc is None else f"{sc:g}")
    out.print(table)


@app.command("generate")
def generate(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see `iclft tasks`)."),
    variant: str = typer.Option("clean", "--variant", "-v", help="clean, misleading, or both."),
    n: int = typer.Option(100, "-n", "--n", help="Number of examples per variant."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed; the same seed gives the same file."),
    output: Path = typer.Option(..., "-o", "--output", help="Output file."),
    fmt: str = typer.Option(
        None, "--format", "-f", help=f"One of {', '.join(FORMATS)} (default: from the suffix)."
    ),
) -> None:
    """Write N examples of a task as JSONL (or Parquet), deterministically from the seed."""
    t = get_task(task)
    variants = parse_variant_list(variant)
    fmt = fmt or ("parquet" if output.suffix == ".parquet" else "jsonl")
    examples = [ex for v in variants for ex in t.generate(v, n, seed)]
    write_examples(output, examples, fmt)
    log.info("wrote %d examples to %s", len(examples), output)


@app.command("show")
def show(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see `iclft tasks`)."),
    variant: str = typer.Option("clean", "--variant", "-v", help="clean or misleading."),
    n: int = typer.Option(3, "-n", "--n", help="Number of examples."),
    seed: int = typer.Option(0, "--seed", "-s"),
) -> None:
    """Pretty-print a few examples as the model sees them, with target and shortcut answer."""
    t = get_task(task)
    for v in parse_variant_list(variant):
        for ex in t.generate(v, n, seed):
            body = t.render_demo(ex)
            title = f"{ex.id}  target={ex.target}  shortcut={ex.shortcut_target}"
            out.print(Panel(body, title=title, title_align="left", highlight=False))
