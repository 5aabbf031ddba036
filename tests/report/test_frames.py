"""``iclft.load_run`` and ``iclft results``: the report's tables as DataFrames and files."""

from __future__ import annotations

import csv
import io

import pytest

import iclft
from iclft.report import build_report


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from .synthetic import write_run

    return write_run(tmp_path_factory.mktemp("frames") / "run", seeds=(0, 1), checkpoints=(10,))


def test_load_run_gives_the_report_tables(run):
    t = iclft.load_run(run)
    paths = build_report(run)
    tables = paths.html.parent / "tables"
    for name in ("headline", "cells"):
        with open(tables / f"{name}.csv") as f:
            rows = list(csv.reader(f))
        df = getattr(t, name)
        assert list(df.columns) == rows[0]
        assert len(df) == len(rows) - 1
        # the same numbers the report's CSV gives
        assert df["accuracy"].tolist() == pytest.approx([float(r[rows[0].index("accuracy")])
                                                         for r in rows[1:]], abs=1e-5)  # fmt: skip
    assert len(t.results) == sum(1 for _ in open(run / "results.jsonl"))


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, tiny_tokenizer, tiny_model_factory):
    from iclft.icl.evaluate import EvalSpec, run_eval

    d = tmp_path_factory.mktemp("frames-model")
    tiny_model_factory("llama", len(tiny_tokenizer), seed=2).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    out = tmp_path_factory.mktemp("frames-eval")
    spec = EvalSpec(tasks=("boolean",), shots=(0, 1), n=3, seed=1, scoring="auto")
    run_eval(spec, out, model=str(d), show_progress=False)
    return out


def test_an_eval_directory_loads_with_its_predictions(eval_dir, tmp_path, iclft_main):
    import pandas as pd

    t = iclft.load_run(eval_dir)
    assert len(t.predictions) == 2 * 2 * 3 and len(t.results) == 2 * 2
    assert {"id", "task", "prompt", "correct", "scores"} <= set(t.predictions.columns)
    assert set(t.headline["entry"]) >= {"baseline"}
    out = tmp_path / "p.parquet"
    code, err = iclft_main("results", str(eval_dir), "--table", "predictions", "--format",
                           "parquet", "-o", str(out))  # fmt: skip
    assert code == 0, err
    got = pd.read_parquet(out)
    assert got["id"].tolist() == t.predictions["id"].tolist()
    assert got["correct"].tolist() == t.predictions["correct"].tolist()


@pytest.mark.parametrize("fmt", ["csv", "markdown", "parquet"])
def test_results_command_formats(fmt, run, tmp_path, iclft_main, capsys):
    import pandas as pd

    out = tmp_path / f"cells.{fmt}"
    code, err = iclft_main("results", str(run), "--table", "cells", "--format", fmt, "-o", str(out))
    assert code == 0, err
    want = iclft.load_run(run).cells
    if fmt == "csv":
        got = pd.read_csv(out)
        assert list(got.columns) == list(want.columns) and len(got) == len(want)
        assert got["accuracy"].tolist() == pytest.approx(want["accuracy"].tolist())
    elif fmt == "parquet":
        got = pd.read_parquet(out)
        assert got["accuracy"].tolist() == pytest.approx(want["accuracy"].tolist())
        assert got["model"].tolist() == want["model"].tolist()
    else:
        lines = out.read_text().splitlines()
        assert lines[0].startswith("| model | task |") and len(lines) == len(want) + 2


def test_results_prints_and_refuses_bad_input(run, iclft_main, capsys):
    import sys

    from iclft.cli import main

    code, err = iclft_main("results", str(run), "--format", "parquet")
    assert code == 2 and "-o FILE" in err
    code, err = iclft_main("results", str(run), "--table", "everything")
    assert code == 2 and "unknown table" in err
    sys.argv = ["iclft", "results", str(run), "--format", "csv"]
    with pytest.raises(SystemExit):
        main()
    text = capsys.readouterr().out
    assert next(csv.reader(io.StringIO(text)))[:2] == ["entry", "model"]
