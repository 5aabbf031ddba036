"""``code``: a program whose first function is computed and then ignored.

The program reads an integer ``x``, computes ``a = function1(x)`` and prints
``function2(x, a)``::

    def function1(x):          # looks heavy: loops, modular arithmetic
        ...
    def function2(z, a):
        return z * 3 - 4       # clean: ``a`` is never used
    x = int(input())
    a = function1(x)
    print(function2(x, a))

* clean: ``function2`` ignores ``a``, so ``function1`` is irrelevant (the shortcut: evaluate
  ``function2`` alone).
* misleading: ``function2`` adds or subtracts ``a`` and ``function1`` is simple enough to be
  computed exactly (``x + 3``, ``x * 2`` ...), never 0, so the shortcut (``function2`` with the
  ``a`` term dropped) is wrong.

Targets are computed here from the template parameters, never by running the program.
``meta``: ``program`` (the source), ``input`` (x), and the template names and constants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from iclft.errors import UserError
from iclft.tasks.base import Example, Task


@dataclass(frozen=True)
class _F1:
    name: str
    source: Callable[[dict[str, int]], str]
    value: Callable[[int, dict[str, int]], int]
    params: Callable[[np.random.Generator], dict[str, int]]


def _mod_loop_value(x: int, p: dict[str, int]) -> int:
    y = x
    for _ in range(p["n"]):
        y = (y * p["m"] + p["q"]) % p["r"]
    return y


def _sum_squares_value(x: int, p: dict[str, int]) -> int:
    s = 0
    for i in range(x % p["k"] + p["n"]):
        s += i * i * p["m"]
    return s % p["r"]


def _digit_mix_value(x: int, p: dict[str, int]) -> int:
    y = x * p["m"]
    t = 0
    while y > 0:
        t = t * p["q"] + y % 10
        y = y // 10
    return t % p["r"]


HEAVY: tuple[_F1, ...] = (
    _F1(
        "mod_loop",
        lambda p: (
            "def function1(x):\n"
            "    y = x\n"
            f"    for i in range({p['n']}):\n"
            f"        y = (y * {p['m']} + {p['q']}) % {p['r']}\n"
            "    return y\n"
        ),
        _mod_loop_value,
        lambda rng: {
            "n": int(rng.integers(3, 8)),
            "m": int(rng.integers(3, 20)),
            "q": int(rng.integers(1, 20)),
            "r": int(rng.choice([97, 101, 103, 107, 109, 113])),
        },
    ),
    _F1(
        "sum_squares",
        lambda p: (
            "def function1(x):\n"
            "    s = 0\n"
            f"    for i in range(x % {p['k']} + {p['n']}):\n"
            f"        s += i * i * {p['m']}\n"
            f"    return s % {p['r']}\n"
        ),
        _sum_squares_value,
        lambda rng: {
            "k": int(rng.integers(3, 8)),
            "n": int(rng.integers(4, 10)),
            "m": int(rng.integers(2, 9)),
            "r": int(rng.choice([89, 97, 101, 103])),
        },
    ),
    _F1(
        "digit_mix",
        lambda p: (
            "def function1(x):\n"
            f"    y = x * {p['m']}\n"
            "    t = 0\n"
            "    while y > 0:\n"
            f"        t = t * {p['q']} + y % 10\n"
            "        y = y // 10\n"
            f"    return t % {p['r']}\n"
        ),
        _digit_mix_value,
        lambda rng: {
            "m": int(rng.integers(11, 99)),
            "q": int(rng.integers(3, 13)),
            "r": int(rng.choice([71, 73, 79, 83])),
        },
    ),
)

SIMPLE: tuple[_F1, ...] = (
    _F1(
        "add",
        lambda p: f"def function1(x):\n    return x + {p['c']}\n",
        lambda x, p: x + p["c"],
        lambda rng: {"c": int(rng.integers(1, 10))},
    ),
    _F1(
        "mul",
        lambda p: f"def function1(x):\n    return x * {p['c']}\n",
        lambda x, p: x * p["c"],
        lambda rng: {"c": int(rng.integers(2, 6))},
    ),
    _F1(
        "sub",
        lambda p: f"def function1(x):\n    return x - {p['c']}\n",
        lambda x, p: x - p["c"],
        lambda rng: {"c": int(rng.integers(1, 10))},
    ),
)

# function2 bodies: (name, source of the expression in z, value)
_F2: tuple[
    tuple[str, Callable[[dict[str, int]], str], Callable[[int, dict[str, int]], int]], ...
] = (
    ("linear", lambda p: f"z * {p['u']} + {p['v']}", lambda z, p: z * p["u"] + p["v"]),
    ("affine_sub", lambda p: f"z * {p['u']} - {p['v']}", lambda z, p: z * p["u"] - p["v"]),
    ("shifted", lambda p: f"(z + {p['v']}) * {p['u']}", lambda z, p: (z + p["v"]) * p["u"]),
)


class CodeTask(Task):
    name = "code"
    description = "function2(z, a) ignores a = function1(x), so the heavy function1 is irrelevant"
    instruction = "Give the output of each Python program for the given input."
    answer_lead = "The output is:"
    shortcut_accuracy_misleading = 0.0

    def __init__(self, input_range: tuple[int, int] = (1, 20)):
        if not 1 <= input_range[0] <= input_range[1]:
            raise UserError(f"input_range must be 1 <= lo <= hi, got {input_range}")
        self.input_range = input_range

    def make_example(self, variant: str, seed: int, index: int) -> Example:
        rng = self.rng(variant, seed, index)
        x = int(rng.integers(self.input_range[0], self.input_range[1] + 1))
        f2_name, f2_src, f2_val = _F2[int(rng.integers(len(_F2)))]
        p2 = {"u": int(rng.integers(2, 6)), "v": int(rng.integers(1, 10))}
        body = f2_src(p2)
        base_value = f2_val(x, p2)  # function2 without any a term
        if variant == "clean":
            f1 = HEAVY[int(rng.integers(len(HEAVY)))]
            p1 = f1.params(rng)
            uses_a = ""
            target = base_value
        else:
            f1 = SIMPLE[int(rng.integers(len(SIMPLE)))]
            p1 = f1.params(rng)
            while f1.value(x, p1) == 0:  # a == 0 would make the shortcut right
                f1 = SIMPLE[int(rng.integers(len(SIMPLE)))]
                p1 = f1.params(rng)
            sign = "+" if rng.random() < 0.5 else "-"
            uses_a = sign
            a = f1.value(x, p1)
            target = base_value + a if sign == "+" else base_value - a
        ret = f"{body} {uses_a} a" if uses_a else body
        program = (
            f"{f1.source(p1)}\n"
            "def function2(z, a):\n"
            f"    return {ret}\n\n"
            "x = int(input())\n"
            "a = function1(x)\n"
            "print(function2(x, a))\n"
        )
        question = f"Program:\n{program}Input: {x}"
        return Example(
            id=self.example_id(variant, seed, index),
            task=self.name,
            variant=variant,
            question=question,
            target=str(target),
            shortcut_target=str(base_value),
            choices=None,
            meta={
                "program": program,
                "input": x,
                "function1": f1.name,
                "function1_params": p1,
                "function2": f2_name,
                "function2_params": p2,
                "a_sign": uses_a or None,
            },
        )
