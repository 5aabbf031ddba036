"""``boolean``: a boolean expression whose trailing term decides the answer.

Parenthesised groups of literals are chained with one operator, and one literal closes the
chain, e.g. ``(True and not False) or (not True or False) or True``.

* clean: the chain ends with ``or True`` (chained with ``or``: the answer is True) or
  ``and False`` (chained with ``and``: the answer is False), so the last literal is the answer
  (the shortcut) and the groups never need evaluating.
* misleading: it ends with ``or False`` or ``and True``, which looks the same but decides
  nothing; the answer is the value of the groups. The shortcut (answer the last literal) is
  right at chance level.

The chain uses one operator throughout so that Python's precedence (``and`` binds tighter than
``or``) cannot make the trailing term non-decisive. Counting words does not answer a group:
its words (how many True, not, and) are drawn before its value, from the word bags that can
spell both values. On a misleading item at most one group decides the chain, at a random
place, so the answer needs every group evaluated. On clean items the chain operator and the
last literal are the answer, by design. Labels are balanced.
``meta``: ``expression`` (Python syntax).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from iclft.tasks.base import Example, Task, balanced_label

LABELS = ("True", "False")
GROUP_SIZES = (2, 3)  # literals per group
P_NOT = 0.3  # how often a literal is negated, before restricting to bags of both values


def _value(lits: tuple[bool, ...], negs: tuple[bool, ...], ops: tuple[str, ...]) -> bool:
    """A group's value with Python's precedence: and-runs first, then or."""
    vals = [lit != neg for lit, neg in zip(lits, negs)]
    or_terms, cur = [], vals[0]
    for op, v in zip(ops, vals[1:]):
        if op == "and":
            cur = cur and v
        else:
            or_terms.append(cur)
            cur = v
    or_terms.append(cur)
    return any(or_terms)


def _text(lits: tuple[bool, ...], negs: tuple[bool, ...], ops: tuple[str, ...]) -> str:
    words = [f"not {lit}" if neg else str(lit) for lit, neg in zip(lits, negs)]
    text = words[0]
    for op, w in zip(ops, words[1:]):
        text += f" {op} {w}"
    return f"({text})"


@dataclass(frozen=True)
class _Bag:
    """The words of a group, counted (literals, ``not``, ``and``): groups that share a bag look
    alike to a model that only counts words. ``forms[v]`` are the groups with value ``v``."""

    weight: float
    forms: dict[bool, tuple[str, ...]]


def _bags(size: int) -> tuple[_Bag, ...]:
    """Every bag of ``size`` literals that holds groups of *both* values, weighted by how often
    independent literals (negated with probability ``P_NOT``) and operators would produce it."""
    found: dict[tuple[int, int, int], dict[bool, list[str]]] = {}
    for lits in itertools.product((True, False), repeat=size):
        for negs in itertools.product((False, True), repeat=size):
            for ops in itertools.product(("and", "or"), repeat=size - 1):
                key = (sum(lits), sum(negs), ops.count("and"))
                forms = found.setdefault(key, {True: [], False: []})
                forms[_value(lits, negs, ops)].append(_text(lits, negs, ops))
    out = []
    for (_, n_not, _), forms in found.items():
        if forms[True] and forms[False]:
            n = len(forms[True]) + len(forms[False])
            weight = n * P_NOT**n_not * (1 - P_NOT) ** (size - n_not)
            out.append(_Bag(weight, {v: tuple(f) for v, f in forms.items()}))
    return tuple(out)


_BAGS = {size: _bags(size) for size in GROUP_SIZES}
_BAG_P = {
    size: np.array([b.weight for b in bags]) / sum(b.weight for b in bags)
    for size, bags in _BAGS.items()
}


def _group(rng: np.random.Generator, value: bool) -> str:
    """A parenthesised group of 2-3 literals with the given value. Its size and its bag of words
    are drawn first, without looking at ``value``: counting True, False, not, and, or tells
    nothing about the group's value; only evaluating it does."""
    size = GROUP_SIZES[int(rng.integers(len(GROUP_SIZES)))]
    bag = _BAGS[size][int(rng.choice(len(_BAGS[size]), p=_BAG_P[size]))]
    forms = bag.forms[value]
    return forms[int(rng.integers(len(forms)))]


def _values(rng: np.random.Generator, n: int, op: str, want: bool) -> list[bool]:
    """Group values whose chain ``g1 op g2 op ...`` is ``want``: every group has the value that
    does not decide the chain (False under ``or``, True under ``and``), except, when ``want``
    is the deciding value, one group at a random place. So no group but that one answers the
    item, and reading part of the chain says little."""
    deciding = op == "or"  # True decides an or-chain, False an and-chain
    values = [not deciding] * n
    if want == deciding:
        values[int(rng.integers(n))] = deciding
    return values


class BooleanTask(Task):
    name = "boolean"
    description = "a trailing 'or True' / 'and False' decides the value of the whole expression"
    instruction = "Evaluate each Python boolean expression."
    answer_lead = "The result is:"
    choices = LABELS
    shortcut_accuracy_misleading = 0.5

    def __init__(self, groups: tuple[int, int] = (2, 4)):
        self.groups = groups

    def make_example(self, variant: str, seed: int, index: int) -> Example:
        rng = self.rng(variant, seed, index)
        label = balanced_label(self.name, variant, seed, index, LABELS)
        n_groups = int(rng.integers(self.groups[0], self.groups[1] + 1))
        if variant == "clean":
            op, last = ("or", "True") if label == "True" else ("and", "False")
            values = [bool(rng.random() < 0.5) for _ in range(n_groups)]
        else:
            op = "or" if rng.random() < 0.5 else "and"
            last = "False" if op == "or" else "True"
            values = _values(rng, n_groups, op, label == "True")
        groups = [_group(rng, v) for v in values]
        expr = f" {op} ".join(groups) + f" {op} {last}"
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
