"""Demonstration sets: independent draws, per-set accuracies, the crossed-design interval (coverage
where the truth is known), held-out items for choosing k, and set-aware paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from iclft.errors import UserError
from iclft.icl.compare import paired_comparisons
from iclft.icl.engine import Engine
from iclft.icl.evaluate import EvalSpec, evaluate_task, heldout_items, prompt_count
from iclft.icl.metrics import crossed_interval, wilson_interval
from iclft.icl.prompts import DemoPool
from iclft.records import Prediction
from iclft.tasks import get_task


def _crossed(rng, *, sets, items, mu, sd_set, sd_item):
    """Correctness of ``sets`` demonstration sets on ``items`` items, with a random effect per
    set and per item on the logit (the crossed design of a real evaluation)."""
    a = rng.normal(0, sd_set, size=(sets, 1))
    b = rng.normal(0, sd_item, size=(1, items))
    p = 1 / (1 + np.exp(-(mu + a + b)))
    return (rng.random((sets, items)) < p).astype(float)


def _truth(mu, sd_set, sd_item, draws=2_000_000, seed=99):
    """The population accuracy: the mean over new sets *and* new items."""
    rng = np.random.default_rng(seed)
    z = mu + rng.normal(0, sd_set, draws) + rng.normal(0, sd_item, draws)
    return float(np.mean(1 / (1 + np.exp(-z))))


@pytest.mark.parametrize("sets,items", [(3, 199), (5, 199), (3, 16)])
def test_the_crossed_interval_covers_the_population_accuracy_with_few_sets(sets, items):
    """1000 synthetic evaluations whose population accuracy (over new sets and new items) is
    known: the crossed-design interval covers it at least 93% of the time with 3 and 5 sets,
    while the Wilson interval over items alone, which ignores the choice of demonstrations,
    covers it far less often."""
    mu, sd_set, sd_item = 0.8, 0.8, 1.0
    truth = _truth(mu, sd_set, sd_item)
    rng = np.random.default_rng(sets * 1000 + items)
    a = rng.normal(0, sd_set, size=(1000, sets, 1))
    b = rng.normal(0, sd_item, size=(1000, 1, items))
    m = (rng.random((1000, sets, items)) < 1 / (1 + np.exp(-(mu + a + b)))).astype(float)
    lo, hi = crossed_interval(m)
    coverage = float(((lo <= truth) & (truth <= hi)).mean())
    assert coverage >= 0.93, coverage
    wilson = [wilson_interval(int(x.sum()), x.size) for x in m]
    hitw = np.mean([wlo <= truth <= whi for wlo, whi in wilson])
    assert hitw < 0.85, hitw


def test_one_set_interval_is_wald_and_all_right_gives_a_point():
    rng = np.random.default_rng(1)
    m = (rng.random((1, 400)) < 0.7).astype(float)
    lo, hi = crossed_interval(m)
    p = m.mean()
    assert float(lo) < p < float(hi)
    assert float(hi - lo) == pytest.approx(2 * 1.966 * np.sqrt(p * (1 - p) / 400), rel=0.05)
    assert tuple(map(float, crossed_interval(np.ones((3, 5))))) == (1.0, 1.0)


def test_demo_sets_are_independent_and_set_zero_is_the_old_list():
    task = get_task("parity")
    q = task.generate("clean", 1, 0)[0]
    old = DemoPool(task, 0, "shared", 4).demos(q, 0, 4)
    sets = [DemoPool(task, 0, "shared", 4, s).demos(q, 0, 4) for s in range(3)]
    assert [d.id for d in sets[0]] == [d.id for d in old]
    ids = [{d.id for d in s} for s in sets]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    per = [DemoPool(task, 0, "per-query", 4, s).demos(q, 0, 4) for s in range(2)]
    assert not {d.id for d in per[0]} & {d.id for d in per[1]}


def test_evaluation_over_sets_rows_and_predictions(tiny_models, tiny_tokenizer):
    eng = Engine(tiny_models["llama"], tiny_tokenizer, batch_size=8, max_new_tokens=4)
    spec = EvalSpec(
        tasks=("boolean",), shots=(0, 1, 2), n=5, seed=3, scoring="auto", demo_sets=3, heldout_n=4
    )
    task = get_task("boolean")
    out = evaluate_task(eng, task, spec, model_label="tiny")
    held = heldout_items(task, spec)
    assert len(out.predictions) == prompt_count(spec) == 2 * 5 * (1 + 3 + 3) + len(held) * 3 * 2
    test_q = {q.question for v in ("clean", "misleading") for q in task.generate(v, 5, 3)}
    assert held and not {q.question for q in held} & test_q
    for r in out.results:
        rows = [
            p
            for p in out.predictions
            if (p.split, p.variant, p.shots) == (r.split, r.variant, r.shots)
        ]
        sets = 1 if r.shots == 0 else 3
        assert r.demo_sets == sets == len(r.set_accuracies)
        assert r.n == len({p.id for p in rows}) and r.n_scored == len(rows)
        for s, acc in enumerate(r.set_accuracies):
            mine = [p.correct for p in rows if p.demo_set == s]
            assert acc == pytest.approx(sum(mine) / len(mine))
        assert r.accuracy == pytest.approx(np.mean(r.set_accuracies))
        assert r.ci_low <= r.accuracy <= r.ci_high
        assert ("crossed-design" in r.interval) == (sets > 1)
    heldout_rows = [r for r in out.results if r.split == "heldout"]
    assert {(r.variant, r.shots) for r in heldout_rows} == {("clean", 1), ("clean", 2)}
    demos = {
        p.demo_set: tuple(p.demo_ids) for p in out.predictions if p.shots == 2 and p.split == "test"
    }
    assert len(set(demos.values())) == 3  # one shared list per set
    again = evaluate_task(eng, task, spec, model_label="tiny")
    assert again.results == out.results  # reproducible from the seed


def test_a_cell_all_wrong_over_every_set_keeps_the_items_wilson_interval(
    tiny_models, tiny_tokenizer
):
    """The crossed interval of all-0 answers is the point 0; the row's interval is never
    narrower than the Wilson interval of its n items."""
    eng = Engine(tiny_models["llama"], tiny_tokenizer, batch_size=8, max_new_tokens=2)
    spec = EvalSpec(tasks=("expression",), variants=("clean",), shots=(1,), n=6, demo_sets=2)
    out = evaluate_task(eng, get_task("expression"), spec, model_label="tiny")
    (row,) = out.results
    mean = row.accuracy
    lo, hi = wilson_interval(mean * 6, 6)
    assert row.ci_low <= lo + 1e-12 and row.ci_high >= hi - 1e-12
    assert row.ci_high - row.ci_low > 0


def test_no_heldout_items_without_two_shot_counts_to_choose_from(tiny_models, tiny_tokenizer):
    eng = Engine(tiny_models["llama"], tiny_tokenizer, batch_size=8, max_new_tokens=4)
    spec = EvalSpec(tasks=("parity",), variants=("clean",), shots=(0, 2), n=3, heldout_n=5)
    out = evaluate_task(eng, get_task("parity"), spec, model_label="tiny")
    assert {p.split for p in out.predictions} == {"test"}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"demo_sets": 0}, "demo_sets: must be >= 1"),
        ({"demo_sets": 33}, "demo_sets: must be <= 32"),
        ({"heldout_n": -1}, "heldout_n: must be >= 0"),
    ],
)
def test_bad_set_settings_are_refused(kwargs, match):
    from iclft.validation import build

    with pytest.raises(UserError, match=match):
        build(EvalSpec, {"tasks": ("parity",), **kwargs})


def test_paired_comparisons_read_sets_and_skip_heldout_items():
    preds = []
    for s in range(3):
        for i in range(10):
            preds.append(
                {"model": "m", "task": "t", "variant": "clean", "method": "icl", "shots": 2,
                 "seed": 0, "id": f"q{i}", "demo_set": s, "split": "test", "correct": i < 5 + s}
            )  # fmt: skip
        preds.append(
            {"model": "m", "task": "t", "variant": "clean", "method": "icl", "shots": 2,
             "seed": 0, "id": "h0", "demo_set": s, "split": "heldout", "correct": True}
        )  # fmt: skip
    for i in range(10):
        preds.append(
            {"model": "m", "task": "t", "variant": "clean", "method": "baseline", "shots": 0,
             "seed": 0, "id": f"q{i}", "split": "test", "correct": i < 2}
        )  # fmt: skip
    (c,) = paired_comparisons([Prediction.from_json(d) for d in preds])  # no targets: no constant
    assert (c.n, c.a_sets, c.b_sets) == (10, 3, 1)
    assert c.accuracy_a == pytest.approx(0.6) and c.accuracy_b == pytest.approx(0.2)
