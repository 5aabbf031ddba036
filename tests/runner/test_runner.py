"""The runner: the grid, resume, refusal of a run directory that holds a different config.
(Crash safety at every named kill point: test_crash_resume.py.)"""

from __future__ import annotations

import json

import pytest

from iclft.config import validate_config
from iclft.errors import UserError
from iclft.runner import plan, run_experiment

from .conftest import rows as _rows
from .conftest import run_config as _config


def test_plan_and_full_run(tiny_dir, tmp_path):
    cfg = validate_config(_config(tiny_dir))
    kinds = [s.kind for s in plan(cfg)]
    assert kinds == ["icl", "finetune", "ft-eval", "finetune", "ft-eval"]
    s = run_experiment(cfg, tmp_path / "r", show_progress=False)
    assert (s.ran, s.skipped) == (5, 0)
    rows = _rows(tmp_path / "r")
    methods = {(r["method"], r["shots"]) for r in rows}
    assert methods == {("baseline", 0), ("icl", 1), ("icl", 2), ("ft-kv", 0), ("ft-lora", 0)}
    assert len(rows) == 2 * 2 * 5
    ft = [r for r in rows if r["method"].startswith("ft-")]
    assert all(r["train_examples"] == 2 * 4 for r in ft)
    curves = tmp_path / "r" / "finetune" / tiny_dir.name
    assert curves.exists() or any((tmp_path / "r" / "finetune").iterdir())
    # paired tests on the same items, consistent with the cells they compare
    comps = [json.loads(x) for x in (tmp_path / "r" / "comparisons.jsonl").open()]
    pairs = {((c["a_method"], c["a_shots"]), (c["b_method"], c["b_shots"])) for c in comps}
    others = [("baseline", 0), ("ft-kv", 0), ("ft-lora", 0)]
    assert pairs == {(("icl", k), o) for k in (1, 2) for o in others} | {
        (("ft-kv", 0), ("baseline", 0)),
        (("ft-lora", 0), ("baseline", 0)),
    }
    acc = {(r["task"], r["variant"], r["method"], r["shots"]): r["accuracy"] for r in rows}
    for c in comps:
        assert c["n"] == 3 and c["seeds"] == [0]
        a = acc[(c["task"], c["variant"], c["a_method"], c["a_shots"])]
        b = acc[(c["task"], c["variant"], c["b_method"], c["b_shots"])]
        assert c["diff"] == pytest.approx(a - b) and c["ci_low"] <= c["diff"] <= c["ci_high"]
        assert 0 <= c["p_value"] <= 1
    again = run_experiment(cfg, tmp_path / "r", show_progress=False)
    assert (again.ran, again.skipped) == (0, 5)
    assert _rows(tmp_path / "r") == rows


def test_a_different_config_is_refused_unless_forced(tiny_dir, tmp_path):
    cfg = validate_config(_config(tiny_dir, methods=["baseline"], shots=[0]))
    run_experiment(cfg, tmp_path / "r", show_progress=False)
    other = validate_config(_config(tiny_dir, methods=["baseline"], shots=[0], n=4))
    with pytest.raises(UserError, match="different config.*n"):
        run_experiment(other, tmp_path / "r", show_progress=False)
    s = run_experiment(other, tmp_path / "r", force=True, show_progress=False)
    assert s.ran == 1 and all(r["n"] == 4 for r in _rows(tmp_path / "r"))


def test_analysis_stages_run_and_reach_the_report(tiny_dir, tmp_path):
    from iclft.report import build_report

    data = _config(
        tiny_dir,
        tasks=["boolean"],
        methods=["baseline", "icl"],
        shots=[0, 2],
        analysis={
            "circuits": {"enabled": True, "shots": 1, "n": 2, "method": "attribution"},
            "similarity": {"enabled": True, "shots": 2, "n": 3, "lr": 1e-2},
        },
    )
    cfg = validate_config(data)
    assert [s.kind for s in plan(cfg)] == ["icl", "circuits", "similarity"]
    s = run_experiment(cfg, tmp_path / "r", show_progress=False)
    assert s.ran == 3
    analysis = tmp_path / "r" / "analysis"
    assert list(analysis.rglob("circuits.json")) and list(analysis.rglob("similarity.json"))
    paths = build_report(tmp_path / "r")
    html = paths.html.read_text()
    assert "analysis" in " ".join(p.name for p in paths.figures)
    assert "similarity" in html.lower()
