"""Fixtures of the runner tests: a tiny saved model, a config over it, and a way to run
``iclft run`` in a subprocess (optionally killed at a named fault point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, save_tiny):
    return save_tiny(tmp_path_factory.mktemp("tiny-run-model"), seed=8)


def run_config(tiny_dir, **over) -> dict:
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


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]


def iclft_run(config: dict, run_dir: Path, tmp: Path, kill_at: str | None = None, *extra):
    """``iclft run`` in a fresh process (same thread count as every other such run)."""
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ICLFT_KILL_AT", None)
    if kill_at:
        env["ICLFT_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "iclft", "run", str(path), "-o", str(run_dir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
