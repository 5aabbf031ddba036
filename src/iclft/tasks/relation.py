"""``relation``: is A connected with Z? Answerable by whether Z appears at all.

A list of undirected "X is connected with Y." lines over capital letters, then the question
"Is A connected with Z?".

* clean: Z appears in the list exactly when it is connected to A (the shortcut: answer Yes iff
  the letter Z occurs).
* misleading: Z always appears; half the time it sits in a component not reachable from A, so
  the shortcut (always Yes here) is right at chance level.

Labels are balanced. ``meta``: ``edges`` (pairs in the order listed), ``source`` ("A"),
``target`` ("Z").
"""

from __future__ import annotations

import numpy as np

from iclft.errors import UserError
from iclft.tasks.base import Example, Task, balanced_label

LABELS = ("Yes", "No")
_POOL = [chr(c) for c in range(ord("B"), ord("Z"))]  # B..Y


def _tree_edges(rng: np.random.Generator, nodes: list[str]) -> list[tuple[str, str]]:
    """A random spanning tree over ``nodes`` (so they form one component)."""
    order = list(rng.permutation(nodes))
    return [(str(order[i]), str(order[int(rng.integers(i))])) for i in range(1, len(order))]


class RelationTask(Task):
    name = "relation"
    description = "A is connected with Z exactly when the letter Z appears in the list"
    instruction = "Answer whether the two letters are connected through the listed connections."
    answer_lead = "The answer is:"
    choices = LABELS

    def __init__(self, nodes: tuple[int, int] = (5, 8)):
        if not 4 <= nodes[0] <= nodes[1] <= len(_POOL) + 2:
            raise UserError(f"nodes must be 4 <= lo <= hi <= {len(_POOL) + 2}, got {nodes}")
        self.nodes = nodes

    def make_example(self, variant: str, seed: int, index: int) -> Example:
        rng = self.rng(variant, seed, index)
        label = balanced_label(self.name, variant, seed, index, LABELS)
        k = int(rng.integers(self.nodes[0], self.nodes[1] + 1))
        others = [str(x) for x in rng.choice(_POOL, size=k - 2, replace=False)]
        if label == "Yes":
            edges = _tree_edges(rng, ["A", "Z", *others])
        elif variant == "clean":  # Z absent; the others still make one or two components
            cut = int(rng.integers(1, len(others) + 1))
            edges = _tree_edges(rng, ["A", *others[:cut]])
            if len(others[cut:]) >= 2:
                edges += _tree_edges(rng, others[cut:])
        else:  # Z present but in another component
            cut = int(rng.integers(1, len(others)))
            edges = _tree_edges(rng, ["A", *others[:cut]]) + _tree_edges(rng, ["Z", *others[cut:]])
        edges = [(a, b) if rng.random() < 0.5 else (b, a) for a, b in edges]
        edges = [edges[i] for i in rng.permutation(len(edges))]
        lines = "\n".join(f"{a} is connected with {b}." for a, b in edges)
        z_present = any("Z" in e for e in edges)
        return Example(
            id=self.example_id(variant, seed, index),
            task=self.name,
            variant=variant,
            question=f"{lines}\nQuestion: Is A connected with Z?",
            target=label,
            shortcut_target="Yes" if z_present else "No",
            choices=LABELS,
            meta={"edges": [list(e) for e in edges], "source": "A", "target": "Z"},
        )
