"""``relation``: is A connected with Z? Answerable by whether Z appears at all.

A list of undirected "X is connected with Y." lines over capital letters, then the question
"Is A connected with Z?".

* clean: Z appears in the list exactly when it is connected to A (the shortcut: answer Yes iff
  the letter Z occurs).
* misleading: Z always appears; half the time it sits in a component not reachable from A, so
  the shortcut (always Yes here) is right at chance level.

No count answers the question: the graph's shape (how many letters, components, lines, and
redundant lines that close cycles) and A's place in it are drawn before the label; Z then takes
one of two places drawn together, with as many lines each: one in A's component, one in
another. So the counts of lines, letters, components and of lines naming A or Z have the same
distribution for Yes and No. Z is never on A's own line (that would answer Yes at a glance).
Labels are balanced. ``meta``: ``edges`` (pairs in the order listed), ``source`` ("A"),
``target`` ("Z").
"""

from __future__ import annotations

import numpy as np

from iclft.errors import UserError
from iclft.tasks.base import Example, Task, balanced_label

LABELS = ("Yes", "No")
_POOL = [chr(c) for c in range(ord("B"), ord("Z"))]  # B..Y
MAX_COMPONENTS = 3
MAX_EXTRA_EDGES = 2  # redundant lines per item, each closing a cycle inside a component
_MAX_TRIES = 1000

Edge = tuple[int, int]


def _shape(rng: np.random.Generator, k: int) -> tuple[list[list[int]], list[Edge]]:
    """Vertices ``0..k-1`` split into 2..3 components of >= 2 vertices, each a random tree,
    plus 0..2 redundant edges inside components."""
    c = int(rng.integers(2, min(MAX_COMPONENTS, k // 2) + 1))
    sizes = [2] * c
    for _ in range(k - 2 * c):
        sizes[int(rng.integers(c))] += 1
    comps, edges, start = [], [], 0
    for size in sizes:
        order = [start + int(i) for i in rng.permutation(size)]
        edges += [(order[i], order[int(rng.integers(i))]) for i in range(1, size)]
        comps.append(list(range(start, start + size)))
        start += size
    used = {frozenset(e) for e in edges}
    free = [(u, v) for comp in comps for u in comp for v in comp if u < v]
    free = [e for e in free if frozenset(e) not in used]
    n_extra = min(int(rng.integers(0, MAX_EXTRA_EDGES + 1)), len(free))
    edges += [free[int(i)] for i in rng.choice(len(free), size=n_extra, replace=False)]
    return comps, edges


def _places(
    rng: np.random.Generator, comps: list[list[int]], edges: list[Edge], a: int
) -> tuple[int, int] | None:
    """Where Z goes if Yes (in A's component, not next to A) and if No (another component),
    chosen as a pair with the same degree so that neither place is told by Z's line count."""
    degree = [0] * sum(len(c) for c in comps)
    for u, v in edges:
        degree[u] += 1
        degree[v] += 1
    near = {a} | {v for e in edges if a in e for v in e}
    home = next(c for c in comps if a in c)
    pairs = [
        (y, n)
        for y in home
        if y not in near
        for comp in comps
        if comp is not home
        for n in comp
        if degree[y] == degree[n]
    ]
    return pairs[int(rng.integers(len(pairs)))] if pairs else None


def _graph(rng: np.random.Generator, k: int) -> tuple[list[Edge], int, tuple[int, int]]:
    """A shape on ``k`` vertices, A's vertex and Z's two places, none of which see the label.
    Shapes without room for both places are drawn again (about 1 in 7 has room at 5-6
    letters, most shapes at 9 or more)."""
    for _ in range(_MAX_TRIES):
        comps, edges = _shape(rng, k)
        a = int(rng.integers(k))
        places = _places(rng, comps, edges, a)
        if places is not None:
            return edges, a, places
    raise UserError(f"could not draw a relation graph on {k} letters in {_MAX_TRIES} tries")


class RelationTask(Task):
    name = "relation"
    description = "A is connected with Z exactly when the letter Z appears in the list"
    instruction = "Answer whether the two letters are connected through the listed connections."
    answer_lead = "The answer is:"
    choices = LABELS
    shortcut_accuracy_misleading = 0.5

    def __init__(self, nodes: tuple[int, int] = (5, 8)):
        if not 5 <= nodes[0] <= nodes[1] <= len(_POOL) + 2:
            raise UserError(
                f"nodes (letters per item) must be 5 <= lo <= hi <= {len(_POOL) + 2} "
                f"(two components, one with room for A and Z apart), got {nodes}"
            )
        self.nodes = nodes

    def make_example(self, variant: str, seed: int, index: int) -> Example:
        rng = self.rng(variant, seed, index)
        label = balanced_label(self.name, variant, seed, index, LABELS)
        k = int(rng.integers(self.nodes[0], self.nodes[1] + 1))
        edges, a, (yes, no) = _graph(rng, k)
        z = yes if label == "Yes" else no
        names: list[str | None] = [None] * k
        names[a] = "A"
        if label == "Yes" or variant == "misleading":
            names[z] = "Z"
        free = [i for i in range(k) if names[i] is None]
        for i, letter in zip(free, rng.choice(_POOL, size=len(free), replace=False)):
            names[i] = str(letter)
        pairs = [(str(names[u]), str(names[v])) for u, v in edges]
        pairs = [(x, y) if rng.random() < 0.5 else (y, x) for x, y in pairs]
        pairs = [pairs[int(i)] for i in rng.permutation(len(pairs))]
        lines = "\n".join(f"{x} is connected with {y}." for x, y in pairs)
        z_present = any("Z" in p for p in pairs)
        return Example(
            id=self.example_id(variant, seed, index),
            task=self.name,
            variant=variant,
            question=f"{lines}\nQuestion: Is A connected with Z?",
            target=label,
            shortcut_target="Yes" if z_present else "No",
            choices=LABELS,
            meta={"edges": [list(p) for p in pairs], "source": "A", "target": "Z"},
        )
