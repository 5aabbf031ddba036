"""Data-parallel scaling of ``iclft eval``: the same work with 1 process and with N processes.

Runs ``iclft eval`` once plainly and once under ``accelerate launch --num_processes N`` (the
CPU config ``configs/accelerate/cpu-2-processes.yaml`` when there is no GPU, one process per
GPU otherwise), each process given ``cores / N`` threads on CPU, and prints the wall time and
the evaluation time (model loaded) of both, their ratio, the prompts each process scored, and
whether predictions are identical item by item: the answers (output, parsed prediction,
correct), and the whole rows, log-probabilities included. On CPU the rows can differ in their
last bits, because the one process runs with all cores' threads and each of N processes with
cores / N, and a different thread count sums floats in a different order; the tests, which give
every process the same threads, check the rows bit for bit. The last line is one JSON object.

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
        "seconds_per_process": manifest["seconds_per_process"],
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
    ap.add_argument("--keep", help="copy both output directories here")
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
        if a.keep:
            import shutil

            shutil.copytree(tmp, a.keep, dirs_exist_ok=True)
    rows = [[json.loads(x) for x in r.pop("predictions").splitlines()] for r in (one, many)]
    same = rows[0] == rows[1]
    answers = [[(p["id"], p["shots"], p["output"], p["prediction"], p["correct"]) for p in r]
               for r in rows]  # fmt: skip
    same_answers = answers[0] == answers[1]
    where = f"{gpus} GPU(s)" if gpus else f"CPU, {os.cpu_count()} cores"
    print(f"iclft eval {' '.join(args)}  [{where}]")
    for name, r in (("1 process", one), (f"{a.processes} processes", many)):
        print(f"  {name:>12}: wall {r['wall_s']:7.1f} s   eval {r['eval_s']:7.1f} s   "
              f"prompts per process {r['prompts_per_process']}, "
              f"computing {r['seconds_per_process']} s")  # fmt: skip
    print(
        f"  speed-up (eval): {one['eval_s'] / many['eval_s']:.2f}x   "
        f"(wall): {one['wall_s'] / many['wall_s']:.2f}x"
    )
    print(f"  identical answers (output, prediction, correct): {same_answers}; identical rows "
          f"(log-probabilities to the last bit): {same}")  # fmt: skip
    if not gpus and not same:
        print(
            "  (on CPU the thread count per process changes float sums in their last bits; "
            "with equal threads per process the rows are identical: tests/distributed)"
        )
    print(json.dumps({
        "processes": a.processes,
        "speedup_eval": round(one["eval_s"] / many["eval_s"], 3),
        "speedup_wall": round(one["wall_s"] / many["wall_s"], 3),
        "identical_answers": same_answers,
        "identical_rows": same,
        "one": one, "many": many, "machine": where,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
