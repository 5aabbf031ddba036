"""``parity``: is the sum of a list of numbers even or odd? The last number decides.

The question lists several two-digit numbers and asks whether their sum is even or odd.
The rule: the sum is odd exactly when the list holds an odd count of odd numbers.

* clean: every number except the last is even, so the parity of the sum is the parity of the
  last number (the shortcut: look at the last number only).
* misleading: the list looks the same (mostly even numbers, last number of either parity) but
  an odd count (1 or 3) of the earlier numbers is odd, so the sum's parity is the *opposite* of
  the last number's: the surface cue points the wrong way on every item, and a model that
  uses only the shortcut scores 0 here (it scores chance on the other binary tasks).

Labels are balanced. ``meta``: ``numbers`` (the list, in order).
"""

from __future__ import annotations

import numpy as np

from iclft.errors import UserError
from iclft.tasks.base import Example, Task, balanced_label

LABELS = ("even", "odd")


def _number(rng: np.random.Generator, odd: bool) -> int:
    v = int(rng.integers(5, 50)) * 2  # even, 10..98
    return v + 1 if odd else v


class ParityTask(Task):
    name = "parity"
    description = "sum parity: all but the last number are even, so the last number decides"
    instruction = "Decide whether the sum of each list of numbers is even or odd."
    answer_lead = "The answer is:"
    choices = LABELS
    shortcut_accuracy_misleading = 0.0

    def __init__(self, length: tuple[int, int] = (5, 8)):
        if not 4 <= length[0] <= length[1]:
            raise UserError(
                f"length must be 4 <= lo <= hi (misleading items need 3 odd "
                f"numbers before the last), got {length}"
            )
        self.length = length

    def make_example(self, variant: str, seed: int, index: int) -> Example:
        rng = self.rng(variant, seed, index)
        label = balanced_label(self.name, variant, seed, index, LABELS)
        n = int(rng.integers(self.length[0], self.length[1] + 1))
        if variant == "clean":
            last_odd = label == "odd"
            head_odd: set[int] = set()
        else:
            last_odd = label == "even"  # the cue points the wrong way
            n_odd = int(rng.choice([1, 3]))
            head_odd = {int(i) for i in rng.choice(n - 1, size=n_odd, replace=False)}
        numbers = [_number(rng, i in head_odd) for i in range(n - 1)]
        numbers.append(_number(rng, last_odd))
        listed = ", ".join(str(v) for v in numbers)
        return Example(
            id=self.example_id(variant, seed, index),
            task=self.name,
            variant=variant,
            question=f"Numbers: {listed}\nIs their sum even or odd?",
            target=label,
            shortcut_target="odd" if last_odd else "even",
            choices=LABELS,
            meta={"numbers": numbers},
        )
