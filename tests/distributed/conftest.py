"""Fixtures of the data-parallel tests: a tiny saved model and a way to run an iclft command
under ``accelerate launch`` with N CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

#: the accelerate config iclft ships for trying several processes on one CPU machine
CPU_CONFIG = Path(__file__).parents[2] / "configs" / "accelerate" / "cpu-2-processes.yaml"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, save_tiny):
    return save_tiny(tmp_path_factory.mktemp("tiny-dp-model"), seed=11)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --num_processes N -m iclft ARGS`` (N = 1: the plain command, as a user
    without accelerate runs it). One thread per process, so N processes share the 2 cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ICLFT_KILL_AT", None)
    if kill_at:
        env["ICLFT_KILL_AT"] = kill_at
    if processes == 1:
        cmd = [sys.executable, "-m", "iclft", *args]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
            "--num_processes", str(processes), "--main_process_port", str(_free_port()),
            "-m", "iclft", *args,
        ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]
