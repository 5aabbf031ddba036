"""Scorers (one per scoring, built for a protocol's judge) and the registered metrics that make
a cell's results row."""

from __future__ import annotations

from dataclasses import fields

import pytest

from iclft.errors import UserError
from iclft.icl.evaluate import EvalSpec, cell_result
from iclft.icl.metrics import CROSSED, METRICS, WILSON, cell_metrics, wilson_interval
from iclft.icl.scoring import SCORERS, Score, get_scorer
from iclft.records import SCORINGS, CellResult, Prediction
from iclft.tasks import get_task


def test_every_scoring_but_auto_has_a_scorer():
    assert set(SCORERS) == set(SCORINGS) - {"auto"}  # auto resolves per task to one of them


def test_generate_parses_then_judges_by_the_protocol():
    task = get_task("expression")
    item = task.generate("misleading", 1, 0)[0]  # target 28, shortcut -10
    exact, paper = get_scorer("generate", "exact"), get_scorer("generate", "paper")
    assert exact(task, item, " 28\n") == Score("28", True, True, False)
    # "28" occurs in "128": the paper's substring judge counts it, exact match does not
    assert exact(task, item, " 128") == Score("128", False, True, False)
    assert paper(task, item, " 128") == Score("128", True, True, False)
    assert exact(task, item, " -10") == Score("-10", False, False, True)
    assert exact(task, item, " ???") == Score(None, False, False, False)


@pytest.mark.parametrize("protocol", ["exact", "paper"])
def test_the_lenient_judge_is_never_below_exact_match(protocol):
    # the parser reads a choice word in any case and a number with a sign or leading zeros;
    # the seed's verbatim substring test misses those, the lenient judge does not
    boolean, expression = get_task("boolean"), get_task("expression")
    true_item = next(q for q in boolean.generate("clean", 8, 0) if q.target == "True")
    neg = next(q for q in expression.generate("clean", 50, 0) if q.target.startswith("-"))
    score = get_scorer("generate", protocol)
    for task, item, output in [
        (boolean, true_item, " true"),
        (boolean, true_item, " TRUE and more"),
        (expression, neg, " -0" + neg.target[1:]),
    ]:
        judged = score(task, item, output)
        assert judged.prediction == item.target and item.target not in output
        assert judged.substring_correct  # exact match holds, so the lenient judge does too
        assert judged.correct  # exact: the parse; paper: the lenient judge
    outputs = [" True", " true", " False", " 12", " 012", "-3", " x True", ""]
    for task, item in [(boolean, true_item), (expression, neg)]:
        for out in outputs:
            judged = get_scorer("generate", "exact")(task, item, out)
            assert judged.substring_correct >= judged.correct


def test_paper_protocol_budgets_are_the_seed_codes_per_task():
    from iclft.icl.evaluate import new_tokens
    from iclft.icl.scoring import PAPER_NEW_TOKENS, token_budget

    # the seed's test.py: generation_len of test_expression 3, test_code 2, test_relation 2,
    # test_bool 1 (parity is ours: one word, as boolean)
    assert PAPER_NEW_TOKENS == {
        "expression": 3, "code": 2, "relation": 2, "boolean": 1, "parity": 1,
    }  # fmt: skip
    spec = EvalSpec(tasks=("boolean",), protocol="paper", max_new_tokens=16)
    assert new_tokens(get_task("boolean"), spec) == 1
    assert token_budget("exact", "boolean", 16) == 16
    assert token_budget("paper", "not-a-seed-task", 16) == 16


def test_loglik_takes_the_likeliest_choice_as_the_answer():
    task = get_task("boolean")
    item = next(q for q in task.generate("misleading", 20, 0) if q.target != q.shortcut_target)
    other = next(c for c in task.choices if c != item.target)
    score = get_scorer("loglik")
    assert score(task, item, item.target) == Score(item.target, True, True, False)
    assert score(task, item, other) == Score(other, False, False, True)


def test_unknown_scorer_or_protocol_is_a_user_error():
    with pytest.raises(UserError, match="unknown scorer 'auto'"):
        get_scorer("auto")
    with pytest.raises(UserError, match="unknown protocol 'lenient'"):
        get_scorer("generate", "lenient")


def _pred(i: int, demo_set: int, correct: bool, *, conflict: bool, shortcut: bool, parsed=True):
    return Prediction(
        id=f"q{i}", model="m", method="icl", task="expression", variant="misleading", shots=2,
        scoring="generate",
        shots_used=2 - (i == 0), demo_set=demo_set, seed=3, output="x",
        prediction="1" if parsed else None, target="1", shortcut_target="2" if conflict else "1",
        correct=correct, substring_correct=correct or i == 1, shortcut_answer=shortcut,
    )  # fmt: skip


def test_a_cell_row_is_its_key_the_spec_and_every_metric():
    # 3 items x 2 demonstration sets; set 0 answers q0 and q1 right, set 1 only q0
    rows = [
        _pred(0, 0, True, conflict=True, shortcut=False),
        _pred(1, 0, True, conflict=True, shortcut=False),
        _pred(2, 0, False, conflict=False, shortcut=True, parsed=False),
        _pred(0, 1, True, conflict=True, shortcut=False),
        _pred(1, 1, False, conflict=True, shortcut=True),
        _pred(2, 1, False, conflict=False, shortcut=True),
    ]
    spec = EvalSpec(tasks=("expression",), seed=3, demos="per-query", protocol="exact")
    row = cell_result(rows, spec)
    assert (row.n, row.n_scored, row.demo_sets, row.correct) == (3, 6, 2, 3)
    assert row.accuracy == 0.5 and row.set_accuracies == pytest.approx([2 / 3, 1 / 3])
    assert row.interval == CROSSED and row.ci_low <= 0.5 <= row.ci_high
    assert row.substring_accuracy == pytest.approx(4 / 6)
    assert row.shortcut_rate == pytest.approx(3 / 6)
    assert row.shortcut_only_accuracy == pytest.approx(2 / 6)
    assert (row.conflict_n, row.conflict_shortcut_rate) == (2, 0.25)
    assert (row.parse_failures, row.truncated, row.shots_used_mean) == (1, 2, pytest.approx(5 / 3))
    assert row.well_formed_rate == pytest.approx(5 / 6)  # q2 of set 0 did not parse
    assert (row.constant_answer, row.constant_accuracy) == ("1", 1.0)  # every target is "1"
    assert (row.demos, row.protocol, row.scoring, row.seed) == ("per-query", "exact", "generate", 3)
    assert row.max_new_tokens == spec.max_new_tokens
    # every field is the cell's key, the spec's, a registered metric's or the runner's
    key = {"model", "task", "variant", "method", "shots", "split"}
    assert set(CellResult.KEY) == key
    from_spec = {*CellResult.FROM_SPEC, "scoring", "max_new_tokens"}
    metric_fields = set(cell_metrics(rows))
    assert metric_fields == (set(METRICS) - {"interval"}) | {"ci_low", "ci_high", "interval"}
    names = {f.name for f in fields(CellResult)}
    assert key | from_spec | metric_fields | set(CellResult.ADDED_BY_RUNNER) == names
    assert not (key | from_spec) & metric_fields

    one_set = [r for r in rows if r.demo_set == 0]
    row = cell_result(one_set, spec)
    assert row.interval == WILSON and (row.ci_low, row.ci_high) == wilson_interval(2, 3)
    assert row.set_sd is None
