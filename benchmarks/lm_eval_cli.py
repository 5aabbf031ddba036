"""``iclft eval`` against lm-evaluation-harness's own CLI on the same items, end to end.

Exports the cells with ``iclft export lm-eval``, then times, each as a fresh process on the same
machine, ``iclft eval`` and ``lm_eval --model hf`` over the exported package (the same prompts,
requests and scoring), and compares every item's prediction. Wall times include each tool's
start-up and model load; iclft's manifest also gives its evaluation time alone. The last line
is one JSON object.

    python benchmarks/lm_eval_cli.py [--model smollm2-135m] [--n 16] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="boolean,expression")
    ap.add_argument("--shots", default="0,2,4")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    from iclft.models.loading import resolve_model
    from iclft.tasks import get_task

    path = resolve_model(a.model).path
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    opts = ["--task", a.tasks, "--variant", "clean,misleading", "--shots", a.shots,
            "-n", str(a.n), "--seed", str(a.seed), "--scoring", "auto",
            "--max-new-tokens", "8"]  # fmt: skip
    iclft = [sys.executable, "-m", "iclft"]
    lm_eval = shutil.which("lm_eval") or sys.exit("lm_eval is not installed (the dev extra)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        timed([*iclft, "export", "lm-eval", *opts, "-o", str(tmp / "pkg")], env)
        ours_s = timed([*iclft, "eval", *opts, "--model", str(path), "--batch-size",
                        str(a.batch_size), "-o", str(tmp / "iclft")], env)  # fmt: skip
        lm_cmd = [lm_eval, "--model", "hf", "--model_args", f"pretrained={path},dtype=float32",
                  "--include_path", str(tmp / "pkg"), "--tasks", "iclft", "--batch_size",
                  str(a.batch_size), "--device", "cpu", "--output_path", str(tmp / "lm"),
                  "--log_samples"]  # fmt: skip
        theirs_s = timed(lm_cmd, env)
        manifest = json.loads((tmp / "iclft" / "manifest.json").read_text())
        ours = {}
        for line in (tmp / "iclft" / "predictions.jsonl").read_text().splitlines():
            p = json.loads(line)
            ours[(p["task"], p["id"], p["variant"], p["shots"])] = p
        sys.path.insert(0, str(tmp / "pkg"))
        import utils  # the package's own scoring module (its stop rule)

        compared = same = 0
        max_diff = 0.0
        for f in (tmp / "lm").rglob("samples_*.jsonl"):
            for line in f.read_text().splitlines():
                s = json.loads(line)
                d = s["doc"]
                p = ours[(d["task"], d["id"], d["variant"], d["shots"])]
                t = get_task(d["task"])
                if t.is_choice:
                    lls = [float(r[0]) for r in s["filtered_resps"]]
                    theirs = t.choices[max(range(len(lls)), key=lls.__getitem__)]
                    max_diff = max(max_diff, *(abs(x - p["scores"][c])
                                               for x, c in zip(lls, t.choices)))  # fmt: skip
                else:
                    theirs = t.parse(utils._until_newline(s["filtered_resps"][0]))
                compared += 1
                same += theirs == p["prediction"]
    print(f"{compared} items ({a.tasks}; clean, misleading; shots {a.shots}; n={a.n}) on {a.model}")
    print(f"  lm_eval (hf, batch {a.batch_size}): {theirs_s:6.1f} s wall")
    print(f"  iclft eval (batch {a.batch_size}):   {ours_s:6.1f} s wall "
          f"({manifest['timings']['load_seconds']:.1f} s load, "
          f"{manifest['timings']['eval_seconds']:.1f} s eval)")  # fmt: skip
    print(f"  ratio {theirs_s / ours_s:.2f}x; identical predictions {same}/{compared}; "
          f"max loglik difference {max_diff:.2g}")  # fmt: skip
    print(json.dumps({"items": compared, "identical": same, "lm_eval_wall_s": round(theirs_s, 2),
                      "iclft_wall_s": round(ours_s, 2), "iclft_eval_s":
                      manifest["timings"]["eval_seconds"], "ratio": round(theirs_s / ours_s, 3),
                      "max_loglik_diff": max_diff}))  # fmt: skip


if __name__ == "__main__":
    main()
