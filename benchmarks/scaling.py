"""Data-parallel scaling of ``iclft eval``: the same work with 1 process and with N processes.

Runs ``iclft eval`` once plainly and once under ``accelerate launch --num_processes N`` (the
CPU config ``configs/accelerate/cpu-2-processes.yaml`` when there is no GPU, one process per
GPU otherwise), each process given ``cores / N`` threads on CPU, and prints the wall time and
the evaluation time (model loaded) of both, their ratio, the prompts each process scored, and
whether predictions are identical item by item. The last line is one JSON object.

On a 2-core CPU machine expect little gain (2 processes of 1 thread against 1 process of 2
threads do the same arithmetic on the same cores); the point there is the machinery and the
identity. On a machine with N GPUs the ratio is the real figure.

    python benchmarks/scaling.py [--model smollm2-135m] [--processes 2] [--n 16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CPU_CONFIG = Path(__file__).parents[1] / "configs" / "accelerate" / "cpu-2-processes.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, args: list[str], out: Path, gpus: int) -> dict:
    cores = os.cpu_count() or 1
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env["OMP_NUM_THREADS"] = str(max(1, cores // processes)) if not gpus else "4"
    cmd = [sys.executable, "-m", "iclft", "eval", *args, "-o", str(out)]
    if processes > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch"]
        launcher += ["--config_file", str(CPU_CONFIG)] if not gpus else ["--multi_gpu"]
        launcher += ["--num_processes", str(processes), "--main_process_port", str(_port())]
        cmd = [*launcher, "-m", "iclft", "eval", *args, "-o", str(out)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "wall_s": round(wall, 2),
        "eval_s": manifest["timings"]["eval_seconds"],
        "processes": manifest["processes"],
        "prompts_per_process": manifest["prompts_per_process"],
        "predictions": (out / "predictions.jsonl").read_text(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--tasks", default="boolean,expression")
    ap.add_argument("--shots", default="0,1,2,4,8")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", default="16")
    a = ap.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    if gpus and a.processes > gpus:
        sys.exit(f"--processes {a.processes} needs as many GPUs; this machine has {gpus}")
    args = ["--model", a.model, "--task", a.tasks, "--shots", a.shots, "-n", str(a.n),
            "--scoring", "auto", "--batch-size", a.batch_size]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args, Path(tmp) / "one", gpus)
        many = run(a.processes, args, Path(tmp) / "many", gpus)
    same = one.pop("predictions") == many.pop("predictions")
    where = f"{gpus} GPU(s)" if gpus else f"CPU, {os.cpu_count()} cores"
    print(f"iclft eval {' '.join(args)}  [{where}]")
    for name, r in (("1 process", one), (f"{a.processes} processes", many)):
        print(f"  {name:>12}: wall {r['wall_s']:7.1f} s   eval {r['eval_s']:7.1f} s   "
              f"prompts per process {r['prompts_per_process']}")  # fmt: skip
    print(
        f"  speed-up (eval): {one['eval_s'] / many['eval_s']:.2f}x   "
        f"(wall): {one['wall_s'] / many['wall_s']:.2f}x   identical predictions: {same}"
    )
    print(json.dumps({
        "processes": a.processes,
        "speedup_eval": round(one["eval_s"] / many["eval_s"], 3),
        "speedup_wall": round(one["wall_s"] / many["wall_s"], 3),
        "identical_predictions": same,
        "one": one, "many": many, "machine": where,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
