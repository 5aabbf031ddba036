"""`accelerate launch -m iclft eval` with 1, 2 and 3 CPU processes writes the same predictions and
results, item by item: each process runs whole batches of the plan one process makes."""

from __future__ import annotations

import json

import pytest

from .conftest import jsonl, launch

#: choice (loglik) and free-answer (generate) tasks, nested shot counts (packed layout) and
#: per-query demonstrations (padded layout); a small batch so every call has many batches
EVAL = ["--task", "boolean,expression", "--variant", "clean,misleading", "--shots", "0,1,2",
        "-n", "5", "--seed", "2", "--scoring", "auto", "--max-new-tokens", "6",
        "--batch-size", "3"]  # fmt: skip


@pytest.mark.parametrize("demos", ["shared", "per-query"])
def test_eval_predictions_are_identical_at_1_2_and_3_processes(tiny_dir, tmp_path, demos):
    outs = {}
    for n in (1, 2, 3):
        out = tmp_path / f"p{n}"
        res = launch(n, "eval", *EVAL, "--demos", demos, "--model", str(tiny_dir), "-o", str(out))
        assert res.returncode == 0, res.stderr[-3000:]
        outs[n] = out
    one = jsonl(outs[1] / "predictions.jsonl")
    assert len(one) == 2 * 2 * 3 * 5
    for n in (2, 3):
        assert jsonl(outs[n] / "predictions.jsonl") == one, n
        assert (outs[n] / "results.jsonl").read_text() == (outs[1] / "results.jsonl").read_text()
        m = json.loads((outs[n] / "manifest.json").read_text())
        assert m["processes"] == n
        per = m["prompts_per_process"]
        assert len(per) == n and sum(per) == len(one) and min(per) > 0, per
    m1 = json.loads((outs[1] / "manifest.json").read_text())
    assert m1["processes"] == 1 and m1["prompts_per_process"] == [len(one)]


def test_two_processes_share_one_response_cache(tiny_dir, tmp_path):
    """Misses agreed across processes, stored once by rank 0; the second run is all hits."""
    cache = tmp_path / "responses.sqlite"
    args = ["eval", *EVAL, "--model", str(tiny_dir), "--cache", str(cache)]
    first = launch(2, *args, "-o", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    again = launch(2, *args, "-o", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    total = 2 * 2 * 3 * 5
    assert (a["response_cache"]["hits"], a["response_cache"]["misses"]) == (0, total)
    assert (b["response_cache"]["hits"], b["response_cache"]["misses"]) == (total, 0)
    assert sum(b["prompts_per_process"]) == 0  # nothing was scored again
    a_preds, b_preds = (jsonl(tmp_path / d / "predictions.jsonl") for d in "ab")
    assert b_preds == a_preds
