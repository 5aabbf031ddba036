"""`accelerate launch -m iclft finetune` with 2 CPU processes (DDP over gloo) ends where a
1-process run with the same global batch ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    common = [
        "-m", "iclft", "finetune", "--model", str(tiny_model_dir), "--method", "full",
        "--tasks", "boolean", "--train-n", "24", "--steps", "3", "--lr", "1e-3",
        "--schedule", "constant", "--warmup-steps", "0", "--eval-every", "0", "--eval-n", "2",
        "--seed", "0", "--optimizer", "sgd",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    one = subprocess.run(
        [sys.executable, *common, "--batch-size", "4", "-o", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    two = subprocess.run(
        [*launch, *common, "--batch-size", "4", "-o", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert (m1["world_size"], m2["world_size"]) == (1, 2), two.stderr[-3000:]
    # tolerance: float32 sums reduced in a different order across processes
    assert abs(m1["final_loss"] - m2["final_loss"]) <= 1e-4 * abs(m1["final_loss"])
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-6)
    # the curve is written once (rank 0): one row per (step, task, variant)
    lines = (tmp_path / "two" / "curves.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 2 * 2  # header + steps {0, 3} x variants
