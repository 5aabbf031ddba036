"""Prompt construction: format, nesting of shared demonstrations, never leaking the query."""

from __future__ import annotations

import pytest

from iclft.icl.prompts import DemoPool, build_prompt, render_prompt
from iclft.tasks import get_task, task_names


@pytest.mark.parametrize("name", task_names())
@pytest.mark.parametrize("mode", ["shared", "per-query"])
def test_prompt_never_contains_own_query_as_demo(name, mode):
    task = get_task(name)
    pool = DemoPool(task, 3, mode, 8)
    for v in ("clean", "misleading"):
        for i, q in enumerate(task.generate(v, 20, 3)):
            demos = pool.demos(q, i, 8)
            assert len(demos) == 8
            assert all(d.question != q.question for d in demos)
            assert all(d.id != q.id for d in demos)
            assert all(d.variant == "clean" for d in demos)
            p = build_prompt(task, q, demos, 8)
            assert p.text.endswith(task.render_query(q))
            assert p.text.count(q.question) == 1


def test_a_demo_equal_to_the_query_is_skipped():
    task = get_task("boolean")
    pool = DemoPool(task, 0, "shared", 4)
    q = task.generate("clean", 1, 0)[0]
    clash = pool._shared_list()[1]
    query = type(q)(**{**q.__dict__, "question": clash.question, "target": clash.target})
    demos = pool.demos(query, 0, 4)
    assert clash not in demos and len(demos) == 4


def test_shared_demos_nest_across_shot_counts():
    task = get_task("expression")
    pool = DemoPool(task, 1, "shared", 16)
    q = task.generate("misleading", 1, 1)[0]
    prefixes = [build_prompt(task, q, pool.demos(q, 0, k), k).prefix for k in (0, 1, 2, 4, 8)]
    for short, long in zip(prefixes, prefixes[1:]):
        assert long.startswith(short)


def test_prompt_layout():
    task = get_task("parity")
    q, d = task.generate("clean", 1, 0)[0], task.generate("clean", 2, 7)[1]
    prefix, text = render_prompt(task, q, [d])
    assert text == (
        f"{task.instruction}\n\n{d.question}\n{task.answer_lead} {d.target}\n\n"
        f"{q.question}\n{task.answer_lead}"
    )
    assert text.startswith(prefix)
