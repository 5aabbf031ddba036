"""The runner: the grid, resume after a crash (a subprocess killed with SIGKILL), refusal of a
run directory that holds a different config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from iclft.config import validate_config
from iclft.errors import UserError
from iclft.runner import plan, run_experiment


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer, tiny_model_factory):
    d = tmp_path_factory.mktemp("tiny-run-model")
    model = tiny_model_factory("llama", len(tiny_tokenizer), seed=8)
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def _config(tiny_dir, **over):
    data = {
        "name": "t",
        "models": [str(tiny_dir)],
        "tasks": ["boolean", "parity"],
        "variants": ["clean", "misleading"],
        "methods": ["baseline", "icl", "ft-kv", "ft-lora"],
        "shots": [0, 1, 2],
        "n": 3,
        "device": "cpu",
        "finetune": {"train_n": 8, "steps": 2, "batch_size": 4, "eval_every": 1, "eval_n": 2},
        "finetune_overrides": {"ft-lora": {"lr": 1e-2}},
    }
    data.update(over)
    return data


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]


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


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_dir, tmp_path):
    data = _config(tiny_dir)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    reference = tmp_path / "ref"
    run_experiment(validate_config(data), reference, show_progress=False)

    run_dir = tmp_path / "crash"
    cmd = [sys.executable, "-m", "iclft", "run", str(config), "-o", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    stages = run_dir / "stages"
    # kill -9 once the first stage is complete and the second (fine-tuning) is under way
    while time.time() < deadline and proc.poll() is None:
        if stages.exists() and len(list(stages.glob("*.json"))) >= 1:
            time.sleep(1.0)
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(stages.glob("*.json")))
    assert done_before < 5

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rows(run_dir) == _rows(reference)
    assert (run_dir / "report.html").exists()


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
