"""``expression``: arithmetic ``(a)+(z)*(c)=`` where ``z`` sums to zero.

Each part is a bracketed sum of small integer terms, e.g. ``(3+2)+(4-4)*(1-7+2-9)``.

* clean: the terms of ``z`` sum to 0, so the answer is just the sum of ``a`` (the shortcut);
  the ``c`` part can be ignored.
* misleading: ``z`` looks the same but sums to a small non-zero value (±1 or ±2) and ``c`` is
  non-zero, so ``a`` alone is wrong: ``shortcut_target = a`` and ``target = a + z*c``.

Knobs: the number of terms of each part and the magnitude range of a term.
``meta`` holds the expression (Python syntax) and the terms of each part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclft.errors import UserError
from iclft.tasks.base import Example, Task


def render_sum(terms: list[int]) -> str:
    """``[3, -2, 4]`` -> ``3-2+4``."""
    out = str(terms[0])
    for t in terms[1:]:
        out += f"+{t}" if t >= 0 else f"-{-t}"
    return out


@dataclass(frozen=True)
class _Parts:
    a: list[int]
    z: list[int]
    c: list[int]


class ExpressionTask(Task):
    name = "expression"
    description = "(a)+(z)*(c): the z terms sum to 0, so the answer is the sum of a"
    instruction = "Calculate the value of each arithmetic expression."
    answer_lead = "The result is:"
    shortcut_accuracy_misleading = 0.0

    def __init__(
        self, terms: tuple[int, int, int] = (2, 4, 4), value_range: tuple[int, int] = (1, 9)
    ):
        if len(terms) != 3 or min(terms) < 1 or terms[1] < 2:
            raise UserError(f"terms must be 3 positive counts with z having >= 2, got {terms}")
        lo, hi = value_range
        if not 0 <= lo <= hi or hi < 2:
            raise UserError(f"value_range must be 0 <= lo <= hi with hi >= 2, got {value_range}")
        self.terms = tuple(terms)
        self.value_range = (lo, hi)

    def _term(self, rng: np.random.Generator) -> int:
        lo, hi = self.value_range
        v = int(rng.integers(max(lo, 1), hi + 1))
        return v if rng.random() < 0.5 else -v

    def _part(self, rng: np.random.Generator, k: int) -> list[int]:
        return [self._term(rng) for _ in range(k)]

    def _part_with_sum(self, rng: np.random.Generator, k: int, total: int) -> list[int]:
        """k terms within the magnitude range that sum to ``total`` (rejection sampling)."""
        lo, hi = max(self.value_range[0], 1), self.value_range[1]
        for _ in range(10_000):
            head = self._part(rng, k - 1)
            last = total - sum(head)
            if lo <= abs(last) <= hi:
                return [*head, last]
        raise UserError(f"cannot make {k} terms in {self.value_range} summing to {total}")

    def make_example(self, variant: str, seed: int, index: int) -> Example:
        rng = self.rng(variant, seed, index)
        ka, kz, kc = self.terms
        a = self._part(rng, ka)
        if variant == "clean":
            z = self._part_with_sum(rng, kz, 0)
            c = self._part(rng, kc)
        else:
            z = self._part_with_sum(rng, kz, int(rng.choice([-2, -1, 1, 2])))
            c = self._part(rng, kc)
            while sum(c) == 0:
                c = self._part(rng, kc)
        expr = f"({render_sum(a)})+({render_sum(z)})*({render_sum(c)})"
        target = sum(a) + sum(z) * sum(c)
        return Example(
            id=self.example_id(variant, seed, index),
            task=self.name,
            variant=variant,
            question=f"{expr}=",
            target=str(target),
            shortcut_target=str(sum(a)),
            choices=None,
            meta={"expression": expr, "a_terms": a, "z_terms": z, "c_terms": c},
        )
