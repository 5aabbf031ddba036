from __future__ import annotations

import pytest

from iclft.analysis.pairs import _bool_chain, corrupt, make_pairs, pair_tasks
from iclft.analysis.patching import encode_pair, tokenizes_alike
from iclft.errors import UserError
from iclft.tasks import get_task
from iclft.tasks.code import _F2


@pytest.mark.parametrize("task", pair_tasks())
def test_pairs_differ_minimally_and_in_answer(task, tiny_tokenizer):
    pairs = make_pairs(task, 6, seed=1, shots=2, same_length=tokenizes_alike(tiny_tokenizer))
    assert len(pairs) == 6 and len({p.id for p in pairs}) == 6
    for p in pairs:
        assert p.clean_answer != p.corrupt_answer
        assert p.clean_prompt.startswith(p.prefix) and p.corrupt_prompt.startswith(p.prefix)
        assert p.clean_prompt != p.corrupt_prompt
        tp = encode_pair(tiny_tokenizer, p)
        assert tp is not None and len(tp.clean) == len(tp.corrupt)
        assert 0 < tp.query_start < tp.prompt_len


@pytest.mark.parametrize("task", pair_tasks())
def test_corrupt_targets_are_recomputed(task):
    t = get_task(task)
    n = 0
    for i in range(60):
        e = t.make_example("clean", 0, i)
        c = corrupt(t, e)
        if c is None:
            continue
        n += 1
        m = c.meta
        if task == "expression":
            want = sum(m["a_terms"]) + sum(m["z_terms"]) * sum(m["c_terms"])
            assert c.question == m["expression"] + "="
        elif task == "parity":
            want = "odd" if sum(m["numbers"]) % 2 else "even"
        elif task == "relation":
            assert "Z" not in {v for edge in m["edges"] for v in edge}
            want = "No"
        elif task == "code":
            f2 = {name: val for name, _, val in _F2}[m["function2"]]
            want = f2(m["input"], m["function2_params"])
            assert c.question.endswith(f"Input: {m['input']}")
        else:
            head, op, last = m["expression"].rsplit(" ", 2)
            v = _bool_chain(head, op)
            want = (v or last == "True") if op == "or" else (v and last == "True")
        assert c.target == str(want) and c.target != e.target
    assert n >= 3


def test_bool_chain_agrees_with_the_task():
    """On misleading items the groups decide the answer; the chain evaluator must agree."""
    t = get_task("boolean")
    for i in range(40):
        e = t.make_example("misleading", 0, i)
        head, op, last = e.meta["expression"].rsplit(" ", 2)
        assert str(_bool_chain(head, op)) == e.target


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="unknown task .nope.; allowed"):
        make_pairs("nope", 1)
