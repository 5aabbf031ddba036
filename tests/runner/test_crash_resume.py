"""A run killed (SIGKILL) at named points in every stage kind resumes to the uninterrupted result.

The points come from ``ICLFT_KILL_AT`` (:mod:`iclft.faults`): the process dies exactly *where*
the test says, never after a delay, so this test does not depend on the machine's speed. One
run directory is killed again and again, each attempt dying further on, then a final attempt
completes; everything it wrote is compared with a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest

from iclft.errors import ModelError
from iclft.models.loading import resolve_model

from .conftest import iclft_run, rows, run_config

FT = "finetune/{model}/ft-kv"

#: (kill point, what must be on disk right after the kill)
CHAIN = [
    ("stage:m0-s0-icl", {"absent": ["stages/m0-s0-icl.json", "predictions/m0-s0-icl.jsonl"]}),
    ("eval:m0-s0-icl/boolean", {"absent": ["predictions/m0-s0-icl.jsonl"]}),
    ("stage-outputs:m0-s0-icl", {"present": ["predictions/m0-s0-icl.jsonl"],
                                 "absent": ["stages/m0-s0-icl.json"]}),
    ("write:m0-s0-icl.json", {"absent": ["stages/m0-s0-icl.json"], "temp": "stages"}),
    ("write:results.jsonl", {"present": ["stages/m0-s0-icl.json"], "absent": ["results.jsonl"]}),
    ("train-step:2", {"present": [f"{FT}/checkpoints/checkpoint-1/trainer_state.json"],
                      "absent": [f"{FT}/checkpoints/checkpoint-2"]}),
    ("checkpoint-save:2", {"present": [f"{FT}/checkpoints/checkpoint-2/model.safetensors"],
                           "absent": [f"{FT}/checkpoints/checkpoint-2/trainer_state.json"]}),
    ("train-save", {"present": [f"{FT}/model.safetensors"], "absent": [f"{FT}/manifest.json"],
                    "unfinished": FT}),
    # the second arrival: the final model's cells, after checkpoint-1's (eval_checkpoints)
    ("eval:m0-s0-ft-kv-eval/boolean#2", {"present": ["stages/m0-s0-ft-kv-train.json"],
                                         "absent": ["stages/m0-s0-ft-kv-eval.json"]}),
    ("circuits:icl", {"absent": ["stages/m0-circuits-boolean.json"]}),
    ("similarity:gd", {"present": ["stages/m0-circuits-boolean.json"],
                       "absent": ["stages/m0-similarity-boolean.json"]}),
]  # fmt: skip


def _config(tiny_dir):
    return run_config(
        tiny_dir,
        methods=["baseline", "icl", "ft-kv"],
        finetune={
            "train_n": 8,
            "steps": 3,
            "batch_size": 4,
            "eval_every": 1,
            "eval_n": 2,
            "save_every": 1,
            "eval_checkpoints": [1, 3],
            "lr": 1e-2,
        },
        finetune_overrides={},
        analysis={
            "circuits": {"enabled": True, "tasks": ["boolean"], "shots": 1, "n": 2},
            "similarity": {
                "enabled": True,
                "tasks": ["boolean"],
                "shots": 2,
                "n": 3,
                "lr": 1e-2,
                "random_draws": 2,
            },
        },
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outcome(run_dir: Path, model_slug: str) -> dict:
    """Everything a run produces that must not depend on where it was interrupted."""
    ft = run_dir / FT.format(model=model_slug)
    analysis = run_dir / "analysis" / model_slug
    circuits = json.loads((analysis / "circuits" / "boolean" / "circuits.json").read_text())
    sim = json.loads((analysis / "similarity" / "boolean" / "similarity.json").read_text())
    stages = {}
    for f in sorted((run_dir / "stages").glob("*.json")):
        record = json.loads(f.read_text())
        record.pop("seconds")
        stages[f.name] = record
    return {
        "results": rows(run_dir),
        "comparisons": (run_dir / "comparisons.jsonl").read_text(),
        "stages": stages,
        "predictions": {p.name: p.read_text() for p in (run_dir / "predictions").glob("*")},
        "ft_weights": _sha(ft / "model.safetensors"),
        "curves": (ft / "curves.csv").read_text(),
        "circuits": {k: circuits[k] for k in ("settings", "shifts", "n_pairs")},
        "similarity": {k: sim[k] for k in ("summary", "metrics", "per_query", "update_norms")},
    }


def test_killed_at_every_point_resumes_to_the_uninterrupted_result(tiny_dir, tmp_path):
    data = _config(tiny_dir)
    slug = str(tiny_dir).strip("/").replace("/", "__")
    reference = tmp_path / "reference"
    done = iclft_run(data, reference, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = tmp_path / "crash"
    for point, expect in CHAIN:
        res = iclft_run(data, run_dir, tmp_path, point)
        assert res.returncode == -signal.SIGKILL, (
            f"{point}: expected death by SIGKILL at the point, got rc {res.returncode}: "
            f"{res.stderr[-2000:]}"
        )
        for rel in expect.get("present", []):
            assert (run_dir / rel.format(model=slug)).exists(), f"{point}: {rel} missing"
        for rel in expect.get("absent", []):
            assert not (run_dir / rel.format(model=slug)).exists(), f"{point}: {rel} exists"
        if "temp" in expect:  # a killed atomic write leaves only its temporary file
            assert list((run_dir / expect["temp"]).glob(".*.tmp")), point
        if "unfinished" in expect:  # weights saved but no manifest: not a model yet
            with pytest.raises(ModelError, match="unfinished fine-tuning run"):
                resolve_model(str(run_dir / expect["unfinished"].format(model=slug)))

    final = iclft_run(data, run_dir, tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "11 stages" not in final.stderr  # sanity: the plan has 5 stages
    assert _outcome(run_dir, slug) == _outcome(reference, slug)
    assert [r["step"] for r in rows(run_dir) if r["method"] == "ft-kv"] == [1] * 4 + [3] * 4
    assert not list(run_dir.rglob(".*.tmp")), "a killed write's temporary file was left behind"
    assert (run_dir / "report.html").exists()
