"""Evaluation cells: metrics, truncation, validation."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from iclft.errors import UserError
from iclft.icl.engine import Engine
from iclft.icl.evaluate import EvalSpec, evaluate_task
from iclft.icl.metrics import wilson_interval
from iclft.tasks import get_task


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (57, 199), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_evaluate_task_rows(tiny_models, tiny_tokenizer):
    eng = Engine(tiny_models["llama"], tiny_tokenizer, batch_size=8, max_new_tokens=4)
    spec = EvalSpec(tasks=("boolean",), shots=(0, 2), n=6, seed=1, scoring="auto")
    out = evaluate_task(eng, get_task("boolean"), spec, model_label="tiny")
    assert len(out.predictions) == 2 * 2 * 6
    assert {(r.variant, r.shots) for r in out.results} == {
        (v, k) for v in ("clean", "misleading") for k in (0, 2)
    }
    for r in out.results:
        assert r.scoring == "loglik" and r.n == 6
        assert r.ci_low <= r.accuracy <= r.ci_high
        assert r.method == ("baseline" if r.shots == 0 else "icl")
        rows = [p for p in out.predictions if p.variant == r.variant and p.shots == r.shots]
        assert r.correct == sum(p.correct for p in rows)
    for p in out.predictions:
        assert p.prediction in ("True", "False")
        assert set(p.scores) == {"True", "False"}
        assert p.correct == (p.prediction == p.target)


def test_truncation_is_recorded(tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory("llama", len(tiny_tokenizer), max_position_embeddings=200)
    eng = Engine(model, tiny_tokenizer, max_new_tokens=4)
    spec = EvalSpec(tasks=("parity",), variants=("clean",), shots=(0, 6), n=3)
    out = evaluate_task(eng, get_task("parity"), spec, model_label="tiny")
    six = [p for p in out.predictions if p.shots == 6]
    assert all(p.shots_used < 6 for p in six)
    assert all(len(tiny_tokenizer(p.prompt)["input_ids"]) + 4 <= 200 for p in six)
    row = next(r for r in out.results if r.shots == 6)
    assert row.truncated == 3 and row.shots_used_mean < 6


def test_shots_far_beyond_context_are_refused(tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory("llama", len(tiny_tokenizer), max_position_embeddings=160)
    eng = Engine(model, tiny_tokenizer)
    spec = EvalSpec(tasks=("parity",), variants=("clean",), shots=(64,), n=2)
    with pytest.raises(UserError, match="cannot fit"):
        evaluate_task(eng, get_task("parity"), spec, model_label="tiny")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tasks": ("expression",), "scoring": "loglik"}, "loglik scoring needs choice tasks"),
        ({"tasks": ("nope",)}, "unknown task"),
        ({"tasks": ("boolean",), "variants": ("dirty",)}, "unknown variant"),
        ({"tasks": ("boolean",), "shots": (-1,)}, "must be >= 0"),
        ({"tasks": ("boolean",), "n": 0}, "must be >= 1"),
        ({"tasks": ("boolean",), "protocol": "paper", "scoring": "loglik"}, "generates text"),
        ({"tasks": ("boolean",), "demos": "sharde"}, "did you mean 'shared'"),
        ({"tasks": ("boolean",), "scoring": "greedy"}, "unknown scoring"),
    ],
)
def test_spec_validation(kwargs, match):
    """Built directly, a bad spec raises pydantic's ValidationError; built from the command's
    options (build), one UserError line naming the setting."""
    from iclft.validation import build

    with pytest.raises(ValueError):
        EvalSpec(**kwargs)
    with pytest.raises(UserError, match=match):
        build(EvalSpec, kwargs)


def test_conflict_shortcut_rate_counts_only_items_where_the_shortcut_is_wrong(
    tiny_models, tiny_tokenizer
):
    eng = Engine(tiny_models["qwen2"], tiny_tokenizer, batch_size=8, max_new_tokens=4)
    spec = EvalSpec(tasks=("relation",), variants=("misleading",), n=10, scoring="loglik")
    out = evaluate_task(eng, get_task("relation"), spec, model_label="tiny")
    (row,) = out.results
    conflict = [p for p in out.predictions if p.shortcut_target != p.target]
    assert row.conflict_n == len(conflict) > 0
    want = sum(p.prediction == p.shortcut_target for p in conflict) / len(conflict)
    assert row.conflict_shortcut_rate == pytest.approx(want)


def test_rows_carry_the_shortcut_only_accuracy_of_their_own_items(tiny_models, tiny_tokenizer):
    eng = Engine(tiny_models["qwen2"], tiny_tokenizer, batch_size=8, max_new_tokens=4)
    task = get_task("boolean")
    spec = EvalSpec(tasks=("boolean",), n=15, seed=3, scoring="loglik")
    rows = {r.variant: r for r in evaluate_task(eng, task, spec, model_label="tiny").results}
    assert rows["clean"].shortcut_only_accuracy == 1.0
    mis = task.generate("misleading", 15, 3)
    want = sum(e.shortcut_target == e.target for e in mis) / 15
    assert rows["misleading"].shortcut_only_accuracy == pytest.approx(want)
    assert 0 < want < 1  # chance-level on this task: the row is measured, not declared
