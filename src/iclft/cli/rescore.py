"""``iclft rescore DIR --protocol P -o OUT``: judge saved outputs again, no model loaded."""

from __future__ import annotations

from pathlib import Path

import typer

from iclft.cli.eval import FORCE


def rescore_command(
    source: Path = typer.Argument(..., help="An `iclft eval` or `iclft run` output directory."),
    protocol: str = typer.Option(
        "exact", "--protocol", help="exact (parse, exact match) or paper (target as a substring)."
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="New directory for the results (an earlier rescore's is replaced whole).",
    ),
    force: bool = FORCE,
) -> None:
    """Recompute results.jsonl (and a run's comparisons.jsonl and stage records) from the saved
    predictions under another protocol, without the model; the source is left as it is."""
    from rich.console import Console

    from iclft.run.rescore import rescore

    results = rescore(source, protocol, output, force=force)
    console = Console(stderr=True)
    for r in results:
        step = "" if r.step is None else f" step {r.step}"
        console.print(
            f"{r.task:<10} {r.variant:<10} {r.method:<9} {r.shots:>3}-shot{step}  "
            f"accuracy {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        )
    console.print(f"results: {output / 'results.jsonl'}")
