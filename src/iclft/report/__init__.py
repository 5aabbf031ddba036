"""The run report: figures (PNG), tables (CSV), ``report.html`` (self-contained) and
``report.md``, all computed from a run directory written by ``iclft run``.

    from iclft.report import build_report
    paths = build_report(Path("runs/demo"))
    print(paths.html)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from iclft.errors import UserError
from iclft.report.data import RunData, load_run
from iclft.report.figures import FigureFile, make_figures
from iclft.report.render import build_sections, render_html, render_markdown
from iclft.report.tables import sentences, write_tables
from iclft.store import ensure_writable_dir, output_owner, write_text_atomic

#: the command kinds whose directories hold results a report is written into
REPORTED = ("run", "rescore", "eval")


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`build_report` wrote its files."""

    run_dir: Path
    html: Path
    markdown: Path
    figures_dir: Path
    tables_dir: Path
    figures: tuple[Path, ...] = ()
    tables: dict[str, Path] = field(default_factory=dict)
    sentences: tuple[str, ...] = ()  # the headline sentences, one per model and task
    skipped: dict[str, str] = field(default_factory=dict)  # section -> why it is empty


def _skip_notes(data: RunData, figures: list[FigureFile]) -> dict[str, str]:
    """A short note for each figure section that drew nothing, saying what was missing."""
    have = {f.section for f in figures}
    notes = {
        "shots": "No results to plot.",
        "robustness": (
            "Skipped: the scatter needs clean and misleading results of the same setting; this "
            f"run has only the {', '.join(data.variants)} variant."
        ),
        "curves": (
            "Skipped: no fine-tuning curves (finetune/MODEL/METHOD/curves.csv) in this run."
        ),
        "efficiency": "Skipped: no ICL or fine-tuning results with a number of examples given.",
        "analysis": "No analysis figures (PNG files under analysis/) in this run.",
    }
    return {k: v for k, v in notes.items() if k not in have}


def build_report(run_dir: Path) -> ReportPaths:
    """Read ``run_dir`` and write ``report.html``, ``report.md``, ``figures/*.png`` and
    ``tables/*.csv`` into it. Raises :class:`iclft.errors.UserError` when the directory has no
    results (``results.jsonl`` missing or empty) or a result row is malformed."""
    run_dir = Path(run_dir)
    owner = output_owner(run_dir) if run_dir.is_dir() else None
    if owner is not None and owner not in REPORTED:
        raise UserError(
            f"{run_dir} was written by `iclft {owner}`; a report is written into the directory "
            f"of `iclft {'`, `iclft '.join(REPORTED)}`"
        )
    data = load_run(run_dir)
    figures_dir = ensure_writable_dir(run_dir / "figures")
    tables_dir = ensure_writable_dir(run_dir / "tables")
    figures = make_figures(data, figures_dir)
    tables = write_tables(data, tables_dir)
    # an earlier report's figures and tables that this one did not write again go: the
    # directories show this report only
    _drop_stale(figures_dir, "*.png", {f.path for f in figures})
    _drop_stale(tables_dir, "*.csv", set(tables.values()))
    skipped = _skip_notes(data, figures)
    sections = build_sections(data, figures, skipped)
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    write_text_atomic(html_path, render_html(data, sections))
    write_text_atomic(md_path, render_markdown(data, sections, run_dir))
    return ReportPaths(
        run_dir=run_dir,
        html=html_path,
        markdown=md_path,
        figures_dir=figures_dir,
        tables_dir=tables_dir,
        figures=tuple(f.path for f in figures),
        tables=tables,
        sentences=tuple(s for _, _, s in sentences(data)),
        skipped=skipped,
    )


def _drop_stale(directory: Path, pattern: str, written: set[Path]) -> None:
    keep = {p.resolve() for p in written}
    for p in directory.glob(pattern):
        if p.resolve() not in keep:
            p.unlink()


__all__ = ["ReportPaths", "build_report", "load_run"]
