"""`iclft eval` from the command line: outputs, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "iclft", *args], capture_output=True, text=True, timeout=timeout
    )


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # progress lines (weights loading) may come first; the error itself is one line, the last
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-2000:]
    for n in needles:
        assert n in errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, save_tiny):
    return save_tiny(tmp_path_factory.mktemp("tiny-eval"), max_position_embeddings=160)


def test_eval_writes_results_predictions_and_manifest(tiny_dir, tmp_path):
    out = tmp_path / "ev"
    p = _run("eval", "--model", str(tiny_dir), "--task", "boolean,expression", "--shots", "0,1",
             "-n", "3", "--seed", "4", "--scoring", "auto", "-o", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(results) == 2 * 2 * 2 and len(preds) == 2 * 2 * 2 * 3
    for key in ("model", "task", "variant", "method", "shots", "scoring", "seed", "n",
                "correct", "accuracy", "ci_low", "ci_high", "substring_accuracy"):  # fmt: skip
        assert all(key in r for r in results), key
    for key in ("id", "task", "variant", "shots", "prompt", "output", "prediction", "target",
                "correct"):  # fmt: skip
        assert all(key in r for r in preds), key
    assert {r["scoring"] for r in results} == {"loglik", "generate"}
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("iclft_version", "git_revision", "packages", "model", "seeds", "device"):
        assert key in manifest
    assert manifest["model"]["weights_sha256"]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--model", "smollm3-135m"], ["smollm2-135m"]),
        (["--model", "no-such-org/no-such-model-xyz"], ["smollm2-135m"]),
        (["--task", "expression", "--scoring", "loglik"], ["choice tasks"]),
        (["--task", "boolean", "--variant", "clen"], ["clean"]),
        (["--task", "boolean", "--shots", "1,x"], ["integers"]),
        (["--task", "boolean", "--demos", "random"], ["per-query"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needles, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    full = ["eval", "--task", "boolean", "-n", "2", "-o", str(tmp_path / "x"), *args]
    # later flags win in Typer, so the per-case ones override the defaults above
    _one_line_error(_run(*full), *needles)


def test_shots_beyond_the_context_are_refused(tiny_dir, tmp_path):
    p = _run("eval", "--model", str(tiny_dir), "--task", "parity", "--shots", "50", "-n", "2",
             "-o", str(tmp_path / "x"))  # fmt: skip
    _one_line_error(p, "cannot fit", "160")
