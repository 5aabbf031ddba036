"""Clean/corrupt prompt pairs for activation patching.

A pair holds two queries that differ minimally (one number, one literal, one letter), have
different answers, and (checked with the model's tokenizer) the same number of tokens, so
positions line up. Both get the same instruction and demonstrations. Per task:

* expression: one digit of the first ``a`` term changes, so ``sum(a)`` and the answer change.
* boolean: the trailing literal flips (``or True`` -> ``or False``); kept only when the answer
  flips too (the groups alone evaluate to the other value).
* parity: the last number moves by one (``34`` -> ``35``), so the parity of the sum flips.
* relation: a ``Yes`` item whose ``Z`` is renamed to a letter absent from the list: ``No``.
* code: the input changes by one (same digit count); ``function2`` is not constant in x.

Queries come from the clean variant (the pattern holds in both members).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from iclft.errors import UserError
from iclft.icl.prompts import DemoPool, render_prompt
from iclft.tasks import Example, Task, get_task
from iclft.tasks.expression import render_sum

MAX_TRIES_PER_PAIR = 50


@dataclass(frozen=True)
class PatchPair:
    """Two prompts that share ``prefix`` (instruction + demonstrations) and differ in the query."""

    id: str
    task: str
    prefix: str
    clean_prompt: str
    corrupt_prompt: str
    clean_answer: str
    corrupt_answer: str


def _expression(task: Task, e: Example) -> Example | None:
    a, z, c = (list(e.meta[k]) for k in ("a_terms", "z_terms", "c_terms"))
    v = abs(a[0])
    new = v + 1 if v + 1 <= 9 and v + 1 < 10 else v - 1
    if new < 1 or len(str(new)) != len(str(v)):
        return None
    a[0] = new if a[0] > 0 else -new
    expr = f"({render_sum(a)})+({render_sum(z)})*({render_sum(c)})"
    target = sum(a) + sum(z) * sum(c)
    meta = {**e.meta, "expression": expr, "a_terms": a}
    return replace(
        e, question=f"{expr}=", target=str(target), shortcut_target=str(sum(a)), meta=meta
    )


def _boolean(task: Task, e: Example) -> Example | None:
    expr = str(e.meta["expression"])
    head, op, last = expr.rsplit(" ", 2)
    flipped = "False" if last == "True" else "True"
    # the groups alone decide the corrupt value: it must be the flipped literal too
    groups_value = _bool_chain(head, op)
    new_value = (
        (groups_value or flipped == "True") if op == "or" else (groups_value and flipped == "True")
    )
    if str(new_value) == e.target:
        return None
    new_expr = f"{head} {op} {flipped}"
    return replace(
        e,
        question=new_expr,
        target=str(new_value),
        shortcut_target=flipped,
        meta={**e.meta, "expression": new_expr},
    )


def _bool_chain(text: str, op: str) -> bool:
    """Value of ``(g1) op (g2) op ...`` where each group is literals joined by and/or (with
    ``not``), evaluated with Python's precedence, without ``eval``."""
    groups = [g.strip().strip("()") for g in text.split(f") {op} (")]
    values = []
    for g in groups:
        tokens = g.strip("() ").split()
        or_terms, cur, i, pending = [], None, 0, None
        while i < len(tokens):
            neg = tokens[i] == "not"
            if neg:
                i += 1
            v = (tokens[i] == "True") != neg
            i += 1
            if cur is None:
                cur = v
            elif pending == "and":
                cur = cur and v
            else:
                or_terms.append(cur)
                cur = v
            if i < len(tokens):
                pending = tokens[i]
                i += 1
        or_terms.append(bool(cur))
        values.append(any(or_terms))
    return any(values) if op == "or" else all(values)


def _parity(task: Task, e: Example) -> Example | None:
    numbers = list(e.meta["numbers"])
    last = numbers[-1]
    numbers[-1] = last + 1 if last + 1 <= 99 else last - 1
    odd = sum(numbers) % 2 == 1
    listed = ", ".join(str(v) for v in numbers)
    label = "odd" if odd else "even"
    return replace(
        e,
        question=f"Numbers: {listed}\nIs their sum even or odd?",
        target=label,
        shortcut_target="odd" if numbers[-1] % 2 else "even",
        meta={**e.meta, "numbers": numbers},
    )


def _relation(task: Task, e: Example) -> Example | None:
    if e.target != "Yes":
        return None
    edges = [list(x) for x in e.meta["edges"]]
    used = {v for edge in edges for v in edge}
    spare = next((c for c in "YXWVUTSRQP" if c not in used), None)
    if spare is None:
        return None
    edges = [[spare if v == "Z" else v for v in edge] for edge in edges]
    lines = "\n".join(f"{a} is connected with {b}." for a, b in edges)
    return replace(
        e,
        question=f"{lines}\nQuestion: Is A connected with Z?",
        target="No",
        shortcut_target="No",
        meta={**e.meta, "edges": edges},
    )


def _code(task: Task, e: Example) -> Example | None:
    from iclft.tasks.code import _F2

    x = int(e.meta["input"])
    new = x + 1 if len(str(x + 1)) == len(str(x)) else x - 1
    if new < 1:
        return None
    f2 = {name: val for name, _, val in _F2}[str(e.meta["function2"])]
    target = f2(new, dict(e.meta["function2_params"]))
    question = e.question.rsplit("Input: ", 1)[0] + f"Input: {new}"
    return replace(
        e,
        question=question,
        target=str(target),
        shortcut_target=str(target),
        meta={**e.meta, "input": new},
    )


CORRUPTORS: dict[str, Callable[[Task, Example], Example | None]] = {
    "expression": _expression,
    "boolean": _boolean,
    "parity": _parity,
    "relation": _relation,
    "code": _code,
}


def corrupt(task: Task, example: Example) -> Example | None:
    """The minimally changed twin of a clean ``example`` with a different answer, or ``None``
    when this example has none (the caller moves on to the next)."""
    if task.name not in CORRUPTORS:
        raise UserError(
            f"no patching pairs for task {task.name!r}; available: {', '.join(CORRUPTORS)}"
        )
    twin = CORRUPTORS[task.name](task, example)
    if twin is None or twin.target == example.target:
        return None
    return replace(twin, id=example.id + "-corrupt")


def make_pairs(
    task: str | Task,
    n: int,
    *,
    seed: int = 0,
    shots: int = 0,
    same_length: Callable[[PatchPair], bool] | None = None,
) -> list[PatchPair]:
    """``n`` pairs for ``task`` with ``shots`` shared demonstrations (``shots=0``: instruction
    only). ``same_length`` (e.g. :func:`iclft.analysis.patching.tokenizes_alike`) rejects pairs
    whose members differ in token count; rejected examples are skipped, not counted."""
    t = get_task(task) if isinstance(task, str) else task
    if t.name not in CORRUPTORS:
        raise UserError(
            f"no patching pairs for task {t.name!r}; available: {', '.join(CORRUPTORS)}"
        )
    pool = DemoPool(t, seed, "shared", max(shots, 1))
    out: list[PatchPair] = []
    index = 0
    while len(out) < n:
        if index >= MAX_TRIES_PER_PAIR * max(n, 1):
            raise UserError(
                f"could only build {len(out)} of {n} patching pairs for {t.name!r} "
                f"from {index} examples; try another seed or fewer pairs"
            )
        clean = t.make_example("clean", seed, index)
        index += 1
        twin = corrupt(t, clean)
        if twin is None:
            continue
        demos = [d for d in pool.demos(clean, index - 1, shots + 1) if d.question != twin.question][
            :shots
        ]
        prefix, clean_prompt = render_prompt(t, clean, demos)
        _, corrupt_prompt = render_prompt(t, twin, demos)
        pair = PatchPair(
            id=clean.id,
            task=t.name,
            prefix=prefix,
            clean_prompt=clean_prompt,
            corrupt_prompt=corrupt_prompt,
            clean_answer=clean.target,
            corrupt_answer=twin.target,
        )
        if same_length is None or same_length(pair):
            out.append(pair)
    return out


def pair_tasks() -> Sequence[str]:
    """Tasks that have patching pairs."""
    return tuple(CORRUPTORS)
