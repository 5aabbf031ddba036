"""What a user asked for and what was done agree, or they are told: shot counts cut to fit the
context are recorded, warned about and shown; a YAML syntax error names file, line and column."""

from __future__ import annotations

import csv
import logging

import pytest

from iclft.errors import UserError


@pytest.fixture(scope="module")
def short_context_dir(tmp_path_factory, save_tiny):
    """A tiny model whose context (200 tokens) holds fewer than 6 parity demonstrations."""
    return save_tiny(tmp_path_factory.mktemp("tiny-short"), max_position_embeddings=200)


def test_shots_cut_to_fit_are_recorded_warned_and_reported(short_context_dir, tmp_path, caplog):
    from iclft.icl.evaluate import EvalSpec, run_eval
    from iclft.report import build_report
    from iclft.store import read_jsonl

    spec = EvalSpec(tasks=("parity",), variants=("clean",), shots=(0, 6), n=3)
    with caplog.at_level(logging.WARNING, logger="iclft"):
        res = run_eval(spec, tmp_path / "ev", model=str(short_context_dir), show_progress=False)
    six = next(r for r in res.results if r.shots == 6)
    zero = next(r for r in res.results if r.shots == 0)
    assert six.truncated == 3 and six.shots_used_mean < 6
    assert six.shots_text == f"6 ({round(six.shots_used_mean, 1):g} used: context)"
    assert zero.shots_text == "0" and not zero.truncated
    saved = next(r for r in read_jsonl(tmp_path / "ev" / "results.jsonl") if r["shots"] == 6)
    assert saved["shots_used_mean"] == six.shots_used_mean and saved["truncated"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert (
        "parity clean: --shots 6 did not fit the model's context of 200 tokens in 3 of 3"
        in (warned[0])
    )
    assert six.shots_text in warned[0]

    paths = build_report(tmp_path / "ev")
    md = paths.markdown.read_text()
    assert f"ICL (k={six.shots_text}, best on test items" in md  # the headline's setting
    assert "k=6: 3 prompts did not fit the model's context" in md  # a reading note
    rows = list(csv.DictReader(open(paths.tables["cells"])))
    used = {r["shots"]: r["shots_used"] for r in rows}
    assert float(used["6"]) == pytest.approx(six.shots_used_mean) and float(used["0"]) == 0


def test_the_eval_table_shows_the_shots_used(short_context_dir, tmp_path):
    from typer.testing import CliRunner

    from iclft.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", str(short_context_dir), "--task", "parity",
                                   "-v", "clean", "--shots", "6", "-n", "2", "-o",
                                   str(tmp_path / "ev")], env={"COLUMNS": "200"})  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "used: context)" in res.output


BAD_YAML = {
    "unclosed": ("name: x\ntasks: [boolean\nmodels: [a]\n", "line 3, column 7"),
    "indent": ("tasks:\n  - boolean\n bad: 1\n", "line 3, column 2"),
    "tab": ("tasks:\n\t- boolean\n", "line 2, column 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_yaml_syntax_errors_name_file_line_and_column(case, tmp_path, iclft_main):
    from iclft.finetune.config import load_config_file
    from iclft.run.config import load_experiment

    text, where = BAD_YAML[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    for load in (load_experiment, load_config_file):
        with pytest.raises(UserError, match=f"{path}, {where}: not valid YAML"):
            load(path)
    for args in (["run", str(path), "--dry-run"], ["finetune", "-c", str(path), "-o", "x"]):
        code, err = iclft_main(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{where}: not valid YAML (" in err


def test_a_directory_given_as_config_is_one_line(tmp_path):
    from iclft.run.config import load_experiment

    with pytest.raises(UserError, match="is a directory; give a YAML file"):
        load_experiment(tmp_path)
