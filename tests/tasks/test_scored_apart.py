"""No training text, demonstration or curve item repeats a question an evaluation scores (test,
held-out or curve item), for every task, at the sizes of configs/paper.yaml."""

from __future__ import annotations

from functools import cache

import pytest

from iclft.finetune import make_config
from iclft.finetune.data import training_data
from iclft.icl.evaluate import EvalSpec, demo_pools
from iclft.icl.prompts import DemoPool
from iclft.run.config import load_experiment, packaged_config
from iclft.tasks import get_task, task_names
from iclft.tasks.splits import HELDOUT_BASE, TRAIN_BASE, scored, scored_questions

PAPER = load_experiment(packaged_config("paper"))
SEED = PAPER.seeds[0]


@cache
def paper_training():
    """Every task's training texts and curve items at the paper's sizes (one call)."""
    ft = PAPER.finetune
    cfg = make_config(tasks=task_names(), train_n=ft.train_n, eval_n=ft.eval_n, seed=SEED,
                      test_n=PAPER.n, heldout_n=PAPER.heldout_n)  # fmt: skip
    return cfg, training_data(cfg)


@cache
def paper_scored(name: str):
    ft = PAPER.finetune
    sizes = dict(test_n=PAPER.n, heldout_n=PAPER.heldout_n, curve_n=ft.eval_n)
    return scored(get_task(name), SEED, **sizes)


@pytest.mark.parametrize("name", task_names())
def test_training_texts_and_curve_items_never_repeat_a_scored_question(name):
    cfg, data = paper_training()
    texts = [t for t in data.texts if t.task == name]
    assert len(texts) == PAPER.finetune.train_n
    apart = paper_scored(name)
    assert not {t.question for t in texts} & apart.questions
    for variant, items in data.curve[name].items():
        assert len(items) == PAPER.finetune.eval_n
        without_curve = scored_questions(get_task(name), SEED, test_n=PAPER.n,
                                         heldout_n=PAPER.heldout_n)  # fmt: skip
        assert not {q.question for q in items} & without_curve
        assert [q.id for q in items] == [q.id for q in apart.curve[variant]]
    # the texts skipped, and only those: the training items a scored question would have taken
    span = get_task(name).generate(
        cfg.train_variant, PAPER.finetune.train_n + data.skipped[name], SEED, start=TRAIN_BASE
    )
    assert data.skipped[name] == sum(q.question in apart.questions for q in span)
    assert {t.question for t in texts} == {q.question for q in span} - apart.questions


def test_boolean_training_data_did_repeat_scored_questions_before_it_skipped_them():
    # the case the rule is for: boolean's small question space (6 of 199 test questions came
    # back among its first 1000 training texts)
    _, data = paper_training()
    assert data.skipped["boolean"] >= 6


def _pool_questions(pool: DemoPool, n: int, heldout_n: int) -> set[str]:
    """The demonstrations of a sample of queries (first, second and last of each variant and
    of the held-out queries) in ``pool``."""
    task = pool.task
    out = set()
    for v in ("clean", "misleading"):
        qs = task.generate(v, n, SEED)
        for i in (0, 1, n - 1):
            out |= {d.question for d in pool.demos(qs[i], i, pool.stride - 4)}
    held = task.generate("clean", heldout_n, SEED, start=HELDOUT_BASE)
    for i in (0, heldout_n - 1):
        out |= {d.question for d in pool.demos(held[i], i, pool.stride - 4, heldout=True)}
    return out


@pytest.mark.parametrize("mode", ["per-query", "shared"])
@pytest.mark.parametrize("name", task_names())
def test_demonstrations_never_show_a_scored_question(name, mode):
    spec = EvalSpec(tasks=(name,), shots=tuple(PAPER.shots), n=PAPER.n, seed=SEED, demos=mode,
                    demo_sets=PAPER.demo_sets, heldout_n=PAPER.heldout_n)  # fmt: skip
    apart = scored_questions(get_task(name), SEED, test_n=PAPER.n, heldout_n=PAPER.heldout_n)
    pools = demo_pools(get_task(name), spec)
    assert len(pools) == PAPER.demo_sets
    for pool in pools:
        shown = _pool_questions(pool, PAPER.n, PAPER.heldout_n)
        assert len(shown) >= max(PAPER.shots)
        assert not shown & apart


def test_a_skipped_per_query_demonstration_is_replaced_from_its_own_spill_range():
    task = get_task("boolean")
    q = task.generate("clean", 1, SEED)[0]
    plain = DemoPool(task, SEED, "per-query", 8).demos(q, 0, 8)
    avoid = {plain[1].question, plain[5].question}
    demos = DemoPool(task, SEED, "per-query", 8, avoid=avoid).demos(q, 0, 8)
    assert len(demos) == 8 and not {d.question for d in demos} & avoid
    kept = [d for d in plain if d.question not in avoid]
    assert demos[: len(kept)] == kept  # the block's other items, in order, then replacements
    blocks = {d.id for d in DemoPool(task, SEED, "per-query", 8).candidates(q, 1)}
    assert not {d.id for d in demos} & blocks  # not taken from the next query's block
