"""``boolean``: a boolean expression whose trailing term decides the answer.

Parenthesised groups of literals are chained with one operator, and one literal closes the
chain, e.g. ``(True and not False) or (False or False) or True``.

* clean: the chain ends with ``or True`` (chained with ``or``: the answer is True) or
  ``and False`` (chained with ``and``: the answer is False), so the last literal is the answer
  (the shortcut) and the groups never need evaluating.
* misleading: it ends with ``or False`` or ``and True``, which looks the same but decides
  nothing; the answer is the value of the groups. The shortcut (answer the last literal) is
  right at chance level.

The chain uses one operator throughout so that Python's precedence (``and`` binds tighter than
``or``) cannot make the trailing term non-decisive. Labels are balanced.
``meta``: ``expression`` (Python syntax).
"""

from __future__ import annotations

import numpy as np

from iclft.tasks.base import Example, Task, balanced_label

LABELS = ("True", "False")


def _group(rng: np.random.Generator) -> tuple[str, bool]:
    """A parenthesised group of 2-3 literals (some negated) and its value."""
    k = int(rng.integers(2, 4))
    lits, vals = [], []
    for _ in range(k):
        v = bool(rng.random() < 0.5)
        if rng.random() < 0.3:
            lits.append(f"not {v}")
            vals.append(not v)
        else:
            lits.append(str(v))
            vals.append(v)
    ops = [str(rng.choice(["and", "or"])) for _ in range(k - 1)]
    text = lits[0]
    for op, lit in zip(ops, lits[1:]):
        text += f" {op} {lit}"
    # evaluate with Python's precedence: and-runs first, then or
    or_terms, cur = [], vals[0]
    for op, v in zip(ops, vals[1:]):
        if op == "and":
            cur = cur and v
        else:
            or_terms.append(cur)
            cur = v
    or_terms.append(cur)
    return f"({text})", any(or_terms)


class BooleanTask(Task):
    name = "boolean"
    description = "a trailing 'or True' / 'and False' decides the value of the whole expression"
    instruction = "Evaluate each Python boolean expression."
    answer_lead = "The result is:"
    choices = LABELS

    def __init__(self, groups: tuple[int, int] = (2, 4)):
        self.groups = groups

    def make_example(self, variant: str, seed: int, index: int) -> Example:
        rng = self.rng(variant, seed, index)
        label = balanced_label(self.name, variant, seed, index, LABELS)
        n_groups = int(rng.integers(self.groups[0], self.groups[1] + 1))
        if variant == "clean":
            op, last = ("or", "True") if label == "True" else ("and", "False")
            groups = [_group(rng) for _ in range(n_groups)]
        else:
            op = "or" if rng.random() < 0.5 else "and"
            last = "False" if op == "or" else "True"
            want = label == "True"
            while True:  # resample groups until their chain has the wanted value
                groups = [_group(rng) for _ in range(n_groups)]
                vals = [v for _, v in groups]
                if (any(vals) if op == "or" else all(vals)) == want:
                    break
        expr = f" {op} ".join(g for g, _ in groups) + f" {op} {last}"
        return Example(
            id=self.example_id(variant, seed, index),
            task=self.name,
            variant=variant,
            question=expr,
            target=label,
            shortcut_target=last,
            choices=LABELS,
            meta={"expression": expr},
        )
