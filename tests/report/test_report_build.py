"""``build_report`` end to end on synthetic run directories: every artefact, a self-contained
HTML file, Markdown links, sections skipped with a note when their inputs are missing."""

from __future__ import annotations

import base64
import csv
import html
import re
import struct

import pytest
import typer
from typer.testing import CliRunner

from iclft.errors import UserError
from iclft.report import build_report

from .synthetic import FT_METHODS


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; fails the test when it is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_full_report_writes_figures_tables_html_and_markdown(full_report):
    p = full_report
    assert p.html.is_file() and p.markdown.is_file()
    names = sorted(f.name for f in p.figures)
    for kind in ("accuracy_vs_shots", "robustness", "finetune_curves", "data_efficiency"):
        assert f"{kind}__smollm2-135m.png" in names
        assert f"{kind}__Qwen__Qwen1.5-0.5B.png" in names
    assert "analysis__circuits__expression__heatmap_icl.png" in names
    assert len(names) == 10
    for f in p.figures:
        w, h = png_size(f.read_bytes())
        assert w > 100 and h > 100 or f.name.startswith("analysis__")
    assert set(p.tables) == {"headline", "cells", "finetune"}
    assert p.skipped == {}
    assert len(p.sentences) == 4  # 2 models x 2 tasks


def test_headline_csv_has_baseline_best_icl_and_each_finetuning(full_report):
    with open(full_report.tables["headline"]) as f:
        rows = list(csv.DictReader(f))
    one = [r for r in rows if r["model"] == "smollm2-135m" and r["task"] == "expression"]
    entries = list(dict.fromkeys(r["entry"] for r in one))
    assert (
        entries[0] == "baseline"
        and entries[1].startswith("ICL (k=")
        and entries[2:] == list(FT_METHODS)
    )
    icl = [r for r in one if r["method"] == "icl"]
    assert {r["variant"] for r in icl} == {"clean", "misleading"}
    assert len({r["shots"] for r in icl}) == 1  # misleading shown at the clean-best k
    with open(full_report.tables["cells"]) as f:
        cells = list(csv.DictReader(f))
    clean_icl = [
        r
        for r in cells
        if (r["model"], r["task"], r["variant"], r["method"])
        == ("smollm2-135m", "expression", "clean", "icl")
    ]
    best = max(clean_icl, key=lambda r: (float(r["accuracy"]), -int(r["shots"])))
    assert icl[0]["shots"] == best["shots"]
    assert all(r["n_seeds"] == "2" and r["std"] != "" for r in cells)
    for r in cells:
        assert float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"])


def test_html_is_one_self_contained_file(full_report):
    text = full_report.html.read_text()
    assert "<link" not in text and "<script src" not in text
    assert not re.search(r"""(src|href)=["']?(https?:|//|figures/)""", text)
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == len(full_report.figures)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert embedded == {f.read_bytes() for f in full_report.figures}
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    for sentence in full_report.sentences:
        assert html.escape(sentence) in text
    # headline tables (one per model), run information, scoring note, analysis summary
    assert text.count("<caption>Headline: ") == 2
    for needle in ("abc123", "finetune.ft-full_s", "future_key", "substring test", "] sd 0."):
        assert needle in text
    assert "faithfulness" in text and "0.6 [0.4, 0.8]" in text and "ignored" not in text
    # circuits: the floor beside the shift, the unidentified setting marked, attribution checked
    assert "0.45 [0.2, 0.7]" in text and "1.33x" in text and "1.1x" in text
    assert "not identified (base)" in text and "NOT IDENTIFIED" in text
    assert "0.93 [0.8, 0.97]" in text and "8/10 (of 20)" in text
    assert "split-half noise floor" in text and "own definition" in text


def test_markdown_links_every_figure_relatively(full_report):
    md = full_report.markdown.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(full_report.figures)
    for link in links:
        assert link.startswith("figures/") and (full_report.run_dir / link).is_file()
    assert "| task | setting | clean accuracy [95%] |" in md
    assert full_report.sentences[0] in md


def test_run_without_finetuning_misleading_or_analysis_skips_with_notes(tmp_path, make_run):
    run = make_run(
        tmp_path / "run",
        tasks=("parity",),
        variants=("clean",),
        methods=("baseline", "icl"),
        curves=False,
        analysis=False,
    )
    p = build_report(run)
    assert sorted(f.name for f in p.figures) == [
        "accuracy_vs_shots__smollm2-135m.png",
        "data_efficiency__smollm2-135m.png",
    ]
    assert set(p.skipped) == {"robustness", "curves", "analysis"}
    assert "only the clean variant" in p.skipped["robustness"]
    text = p.html.read_text()
    for note in p.skipped.values():
        assert html.escape(note) in text
    assert "finetune" not in p.tables
    (s,) = p.sentences
    assert "for the 0-shot baseline" in s and "misleading" not in s


def test_run_with_only_finetuning_still_reports(tmp_path, make_run):
    run = make_run(tmp_path / "run", tasks=("boolean",), methods=("baseline", "ft-lora"))
    p = build_report(run)
    assert {f.name.split("__")[0] for f in p.figures} >= {
        "accuracy_vs_shots",
        "robustness",
        "finetune_curves",
        "data_efficiency",
    }
    (s,) = p.sentences
    assert "fine-tuning (ft-lora)" in s and "ICL" not in s


def test_report_command_prints_the_paths_and_raises_user_errors(tmp_path, make_run):
    from iclft.cli.report import report_command

    app = typer.Typer()
    app.command()(report_command)
    run = make_run(
        tmp_path / "run",
        tasks=("expression",),
        variants=("clean",),
        methods=("baseline", "icl"),
        shots=(1,),
        curves=False,
        analysis=False,
    )
    result = CliRunner().invoke(app, [str(run)], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert str(run / "report.html") in result.output and str(run / "report.md") in result.output
    assert "On expression" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, [str(empty)])
    assert isinstance(result.exception, UserError)
    assert "run `iclft run` first" in str(result.exception)


@pytest.mark.parametrize("missing", ["config.json", "manifest.json"])
def test_missing_config_or_manifest_is_noted_not_fatal(tmp_path, make_run, missing):
    run = make_run(
        tmp_path / "run",
        tasks=("expression",),
        methods=("baseline", "icl"),
        shots=(1,),
        curves=False,
        analysis=False,
        variants=("clean",),
    )
    (run / missing).unlink()
    page = build_report(run).html.read_text()
    assert f"No {missing}" in page


def test_figures_and_tables_mark_each_evaluated_checkpoint(tmp_path, make_run, monkeypatch):
    """Fine-tuned models evaluated at steps 5 and 10 (checkpoints) and 20 (final): the curves
    and data-efficiency figures mark those steps; the tables list every step."""
    import iclft.report.figures as figures

    drawn = {}
    save = figures._save

    def keep(fig, path):
        drawn[path.name.split("__")[0]] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    run = make_run(
        tmp_path / "run",
        tasks=("boolean",),
        methods=("baseline", "icl", "ft-full", "ft-lora"),
        checkpoints=(5, 10),
        analysis=False,
    )
    p = build_report(run)

    def xs(fig, marker: str) -> list[float]:
        """The x of every point drawn with ``marker``, over all panels."""
        lines = [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() == marker]
        return sorted({float(x) for ln in lines for x in ln.get_xdata()})

    curves = drawn["finetune_curves"]
    assert xs(curves, figures.CHECKPOINT_MARKER) == [5, 10]
    assert xs(curves, figures.FINAL_MARKER) == [20]
    vertical = {
        float(ln.get_xdata()[0])
        for ax in curves.axes
        for ln in ax.lines
        if ln.get_linestyle() == ":" and len(ln.get_xdata()) and len(set(ln.get_xdata())) == 1
    }
    assert vertical == {5.0, 10.0, 20.0}
    efficiency = drawn["data_efficiency"]
    assert xs(efficiency, figures.CHECKPOINT_MARKER) == [80, 160]  # step x 16 examples
    assert xs(efficiency, figures.FINAL_MARKER) == [320]
    labels = {t.get_text() for ax in efficiency.axes for t in ax.texts}
    assert {"step 5", "step 10"} <= labels

    with open(p.tables["cells"]) as f:
        cells = [r for r in csv.DictReader(f) if r["method"] == "ft-full"]
    assert sorted({r["step"] for r in cells}, key=int) == ["5", "10", "20"]
    with open(p.tables["headline"]) as f:
        head = [r for r in csv.DictReader(f) if r["method"] == "ft-full"]
    assert {r["step"] for r in head} == {"20"}
    page = p.html.read_text()
    assert "Fine-tuned models at each evaluated step: smollm2-135m" in page
    assert "ft-full (final)" in page


def test_a_report_written_again_holds_only_its_own_figures_and_tables(make_run, tmp_path):
    """Figures and tables of an earlier report that this one does not draw do not linger
    beside it; other files in the run directory are left alone."""
    from iclft.report import build_report

    run = make_run(tmp_path / "run")
    first = build_report(run)
    stale_fig = first.figures_dir / "accuracy_vs_shots__old-model.png"
    stale_fig.write_bytes(b"old")
    stale_table = first.tables_dir / "old.csv"
    stale_table.write_text("a\n")
    (run / "notes.txt").write_text("mine")
    again = build_report(run)
    assert not stale_fig.exists() and not stale_table.exists()
    assert sorted(p.name for p in again.figures_dir.glob("*.png")) == sorted(
        p.name for p in again.figures
    )
    assert (run / "notes.txt").read_text() == "mine"
