"""The ``iclft`` command line. Thin: each command parses options and calls one library function.

User mistakes raise :class:`iclft.errors.UserError`; :func:`main` prints them as one red line
on stderr and exits with code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from iclft import __version__, logs
from iclft.cli import data as data_cmd
from iclft.errors import UserError


def _flags_without_type() -> None:
    """Typer (0.29) shows ``<bool>`` beside every flag in ``--help`` as if it took a value;
    a flag shows no type, as click's plain help has it."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag and not self.count else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_without_type()

app = typer.Typer(
    name="iclft",
    help="In-context learning vs fine-tuning on tasks with implicit patterns.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"iclft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Debug messages too. Like -q and --log-file, goes before the command: iclft -v eval",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Warnings and errors only: no progress, no info messages."
    ),
    log_file: Path = typer.Option(
        None, "--log-file", help="Also append the log (plain lines, progress included) here."
    ),
) -> None:
    """In-context learning vs fine-tuning on tasks with implicit patterns."""
    if verbose and quiet:
        raise UserError("--verbose (-v) and --quiet (-q) exclude each other; give one of them")
    if log_file is not None and log_file.is_dir():
        raise UserError(f"--log-file {log_file} is a directory; give a file path")
    try:
        logs.configure("debug" if verbose else "quiet" if quiet else "info", log_file)
    except OSError as e:
        raise UserError(f"cannot write the log file {log_file}: {e.strerror or e}") from None


app.command("tasks")(data_cmd.tasks)
app.add_typer(data_cmd.app, name="data")


def _register_optional() -> None:
    """Sub-apps whose modules pull in torch are imported here so ``--help`` stays one place."""
    from iclft.cli import analyze as analyze_cmd
    from iclft.cli import eval as eval_cmd
    from iclft.cli import export as export_cmd
    from iclft.cli import finetune as finetune_cmd
    from iclft.cli import models as models_cmd
    from iclft.cli import report as report_cmd
    from iclft.cli import rescore as rescore_cmd
    from iclft.cli import results as results_cmd
    from iclft.cli import run as run_cmd

    app.add_typer(models_cmd.app, name="models")
    app.command("eval")(eval_cmd.eval_command)
    app.add_typer(analyze_cmd.app, name="analyze")
    app.command("finetune")(finetune_cmd.finetune_command)
    app.command("run")(run_cmd.run_command)
    app.command("report")(report_cmd.report_command)
    app.command("demo")(run_cmd.demo_command)
    app.add_typer(export_cmd.app, name="export")
    app.command("rescore")(rescore_cmd.rescore_command)
    app.command("results")(results_cmd.results_command)


_register_optional()


def main() -> None:
    """Entry point: run the app and turn user errors into one red line and exit code 2."""
    try:
        app()
    except UserError as e:
        message = str(e).replace("\n", " ")
        line = Text("error: ", style="bold red")
        line.append(message)
        err.print(line, soft_wrap=True, highlight=False)
        logs.to_file(logging.ERROR, f"error: {message}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", style="red")
        sys.exit(130)
