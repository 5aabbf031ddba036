"""``iclft results DIR``: a run's or evaluation's tables as CSV, Parquet or Markdown."""

from __future__ import annotations

from pathlib import Path

import typer


def results_command(
    directory: Path = typer.Argument(..., help="An `iclft run` or `iclft eval` directory."),
    table: str = typer.Option(
        "headline", "--table", help="headline, cells, results, predictions or comparisons."
    ),
    fmt: str = typer.Option("markdown", "--format", "-f", help="csv, parquet or markdown."),
    output: Path = typer.Option(None, "-o", "--output", help="File to write (else printed)."),
) -> None:
    """Print or write one table of a directory (`iclft.load_run(DIR)` gives them all as
    pandas DataFrames)."""
    from iclft.frames import load_run, write_table

    text = write_table(load_run(directory).table(table), fmt, output)
    if text is not None:
        typer.echo(text, nl=False)
