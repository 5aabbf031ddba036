"""A run or evaluation directory as pandas DataFrames: ``iclft.load_run(path)``, and the
``iclft results`` command that prints or writes them as CSV, Parquet or Markdown.

The tables are the report's (:mod:`iclft.report.tables`): ``headline`` (baseline, ICL at the
chosen and the fixed k, each fine-tuning method; clean and misleading), ``cells`` (every cell,
seeds pooled, checkpoints beside final models), plus the raw ``results`` (results.jsonl),
``predictions`` (every prediction file of the directory) and ``comparisons`` (paired tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclft.errors import UserError

TABLES = ("headline", "cells", "results", "predictions", "comparisons")
FORMATS = ("csv", "parquet", "markdown")


@dataclass
class RunTables:
    """The tables of one directory, each a ``pandas.DataFrame``."""

    headline: Any
    cells: Any
    results: Any
    predictions: Any
    comparisons: Any

    def table(self, name: str):
        if name not in TABLES:
            raise UserError(f"unknown table {name!r}; allowed: {', '.join(TABLES)}")
        return getattr(self, name)


def _predictions(path: Path) -> list[dict[str, Any]]:
    from iclft.store import read_jsonl

    files = [path / "predictions.jsonl"] if (path / "predictions.jsonl").is_file() else []
    files += (
        sorted((path / "predictions").glob("*.jsonl")) if (path / "predictions").is_dir() else []
    )
    rows: list[dict[str, Any]] = []
    for f in files:
        stage = f.stem if f.parent.name == "predictions" else None
        rows += [{**r, "stage": stage} if stage else r for r in read_jsonl(f)]
    return rows


def load_run(path: Path | str) -> RunTables:
    """Read an ``iclft run`` or ``iclft eval`` directory into DataFrames."""
    import pandas as pd

    from iclft.report.data import load_run as load_run_data
    from iclft.report.tables import CELL_COLUMNS, cell_values, headline

    data = load_run_data(Path(path))
    head = [
        [e.label, *cell_values(c)]
        for m in data.models
        for t in data.tasks
        for e in headline(data, m, t)
        for c in (e.clean, e.misleading)
        if c is not None
    ]
    cells = sorted(
        [*data.cells.values(), *data.checkpoints.values()],
        key=lambda c: (c.model, c.task, c.method, c.variant, c.shots, c.step or 0),
    )
    from iclft.store import read_jsonl

    return RunTables(
        headline=pd.DataFrame(head, columns=["entry", *CELL_COLUMNS]),
        cells=pd.DataFrame([cell_values(c) for c in cells], columns=list(CELL_COLUMNS)),
        results=pd.DataFrame(read_jsonl(Path(path) / "results.jsonl")),
        predictions=pd.DataFrame(_predictions(Path(path))),
        comparisons=pd.DataFrame([c.to_json() for c in data.comparisons]),
    )


def markdown(df) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(df, fmt: str, output: Path | None) -> str | None:
    """``df`` as ``fmt``: written to ``output`` (atomically), or returned as text to print."""
    from iclft.store import atomic_writer

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "parquet":
        if output is None:
            raise UserError("parquet is binary; give -o FILE to write it")
        # nested values (lists, dicts) as JSON text: parquet wants one type per column
        flat = df.copy()
        for col in flat.columns:
            if flat[col].map(lambda v: isinstance(v, (list, dict))).any():
                import json

                flat[col] = flat[col].map(lambda v: json.dumps(v) if v is not None else None)
        with atomic_writer(output, "wb") as f:
            flat.to_parquet(f, index=False)
        return None
    text = df.to_csv(index=False) if fmt == "csv" else markdown(df)
    if output is None:
        return text
    with atomic_writer(output) as f:
        f.write(text)
    return None
