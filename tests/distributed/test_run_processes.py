"""`accelerate launch -m iclft run` with 2 CPU processes: the grid (evaluation split by batches,
fine-tuning as one DDP job, analysis stages one per process) ends where the 1-process run ends,
and a 2-process run killed mid-way resumes to the same results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .conftest import jsonl, launch


def _config(model: Path) -> dict:
    return {
        "name": "dp",
        "models": [str(model)],
        "tasks": ["boolean", "parity"],
        "variants": ["clean", "misleading"],
        "methods": ["baseline", "icl", "ft-kv"],
        "shots": [0, 1, 2],
        "n": 4,
        "device": "cpu",
        "batch_size": 3,
        # the global batch: 4 rows in one process, 2 in each of two
        "finetune": {"train_n": 8, "steps": 2, "batch_size": 4, "eval_every": 0, "eval_n": 2,
                     "lr": 1e-2, "optimizer": "sgd", "schedule": "constant", "warmup_steps": 0},
        "analysis": {
            "circuits": {"enabled": True, "tasks": ["boolean", "parity"], "shots": 1, "n": 2},
            "similarity": {"enabled": True, "tasks": ["boolean"], "shots": 2, "n": 3,
                           "lr": 1e-2, "random_draws": 2},
        },
    }  # fmt: skip


def _run(processes: int, cfg: dict, run_dir: Path, tmp: Path, kill_at: str | None = None):
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return launch(processes, "run", str(path), "-o", str(run_dir), kill_at=kill_at)


def _outcome(run_dir: Path) -> dict:
    """What must not depend on the number of processes (log-probabilities to rounding)."""
    preds = {}
    for f in sorted((run_dir / "predictions").glob("*.jsonl")):
        rows = jsonl(f)
        for r in rows:
            if r.get("scores"):
                r["scores"] = {k: round(v, 4) for k, v in r["scores"].items()}
        preds[f.name] = rows
    analysis = {}
    for f in sorted((run_dir / "analysis").rglob("*.json")):
        d = json.loads(f.read_text())
        d.pop("timings", None)
        analysis[str(f.relative_to(run_dir))] = d
    return {
        "results": (run_dir / "results.jsonl").read_text(),
        "comparisons": (run_dir / "comparisons.jsonl").read_text(),
        "predictions": preds,
        "stages": sorted(p.name for p in (run_dir / "stages").glob("*.json")),
        "analysis": sorted(analysis),
    }


@pytest.fixture(scope="module")
def one_process(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    res = _run(1, _config(tiny_dir), tmp / "run", tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "run"


def test_two_processes_run_the_grid_to_the_one_process_result(tiny_dir, tmp_path, one_process):
    res = _run(2, _config(tiny_dir), tmp_path / "run", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    two = tmp_path / "run"
    assert _outcome(two) == _outcome(one_process)
    # the evaluation before any fine-tuning is identical to the last bit
    for name in ("m0-s0-icl.jsonl",):
        assert (two / "predictions" / name).read_text() == (
            one_process / "predictions" / name
        ).read_text()
    m = json.loads((two / "manifest.json").read_text())
    assert m["processes"] == 2 and m["status"] == "complete"
    for key, per in m["prompts_per_process"].items():
        assert len(per) == 2 and min(per) > 0, (key, per)
    total = sum(m["prompts_per_process"]["m0-s0-icl"])
    assert total == len(jsonl(two / "predictions" / "m0-s0-icl.jsonl"))
    # the analysis stages were shared out; fine-tuning was one 2-process job, same global batch
    assert set(m["stage_process"].values()) == {0, 1}, m["stage_process"]
    ft = {n: json.loads(next((d / "finetune").rglob("manifest.json")).read_text())
          for n, d in ((1, one_process), (2, two))}  # fmt: skip
    assert (ft[1]["world_size"], ft[2]["world_size"]) == (1, 2)
    assert ft[1]["examples_per_step"] == ft[2]["examples_per_step"] == 4
    assert (two / "report.html").exists()


def test_a_killed_two_process_run_resumes_to_the_same_results(tiny_dir, tmp_path, one_process):
    cfg = _config(tiny_dir)
    run_dir = tmp_path / "run"
    # die mid-grid: after the ICL stage's first task, then inside fine-tuning, then in circuits
    for point in ("eval:m0-s0-icl/boolean", "train-step:1", "circuits:icl"):
        res = _run(2, cfg, run_dir, tmp_path, kill_at=point)
        assert res.returncode != 0, f"{point}: the run was expected to die there"
        assert "SIGKILL" in res.stderr, f"{point}: died otherwise: {res.stderr[-2000:]}"
        assert json.loads((run_dir / "config.json").read_text())["name"] == "dp"
    assert (run_dir / "stages" / "m0-s0-ft-kv-train.json").exists()
    assert (
        not (run_dir / "stages" / "m0-circuits-boolean.json").exists()
        or not (run_dir / "stages" / "m0-circuits-parity.json").exists()
    )
    res = _run(2, cfg, run_dir, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _outcome(run_dir) == _outcome(one_process)
    assert not list(run_dir.rglob(".*.tmp"))
