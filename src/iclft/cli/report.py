"""``iclft report RUN_DIR``: write the HTML and Markdown report of a run directory."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by `iclft run`."),
) -> None:
    """Write report.html (self-contained), report.md, figures/*.png and tables/*.csv into
    RUN_DIR, and print where they are with the headline sentences."""
    from rich.console import Console

    from iclft.report import build_report

    paths = build_report(run_dir)
    out = Console(soft_wrap=True)
    for s in paths.sentences:
        out.print(f"• {s}", highlight=False)
    for section, why in paths.skipped.items():
        out.print(f"[dim]{section}: {why}[/dim]", highlight=False)
    out.print(f"report:  {paths.html}", highlight=False)
    out.print(f"         {paths.markdown}", highlight=False)
    out.print(f"figures: {paths.figures_dir} ({len(paths.figures)} PNG)", highlight=False)
    out.print(f"tables:  {paths.tables_dir} ({len(paths.tables)} CSV)", highlight=False)
