"""Building k-shot prompts.

A k-shot prompt is the task's instruction line, k clean demonstrations with their answers, then
the query without its answer::

    <instruction>

    <demo 1 question>
    <answer lead> <demo 1 target>

    ...

    <query question>
    <answer lead>

Demonstration modes:

* ``shared``: one fixed ordered list per (task, seed); k shots use its first k items, so every
  shot count's prompt starts with the previous one's demonstrations (the engine reuses the
  key/value cache of that common prefix across queries, shot counts and both variants).
* ``per-query``: fresh demonstrations for each query (the paper's protocol); only the
  instruction line is shared.

Demonstrations come from index ranges that queries never use, and any demonstration whose
question equals the query's is skipped, so a prompt never shows its own query's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from iclft.errors import UnknownNameError
from iclft.tasks.base import VARIANTS, Example, Task

DEMO_MODES = ("shared", "per-query")
SEP = "\n\n"
_SHARED_BASE = 1_000_000  # demonstration indices live far from query indices (0 .. n-1)
_PER_QUERY_BASE = 10_000_000


@dataclass(frozen=True)
class Prompt:
    """One prompt and where it came from; ``prefix`` is the part shared with other prompts."""

    text: str
    prefix: str
    query: Example
    shots: int  # requested
    demos: tuple[Example, ...]  # actually used (``len(demos) < shots`` when truncated)

    @property
    def shots_used(self) -> int:
        return len(self.demos)


def render_prompt(task: Task, query: Example, demos: Sequence[Example]) -> tuple[str, str]:
    """``(prefix, full_text)``: the prefix is the instruction and the demonstrations."""
    parts = [task.instruction, *(task.render_demo(d) for d in demos)]
    prefix = SEP.join(parts) + SEP
    return prefix, prefix + task.render_query(query)


class DemoPool:
    """Where demonstrations come from, for one task and seed."""

    def __init__(self, task: Task, seed: int, mode: str, max_shots: int):
        if mode not in DEMO_MODES:
            raise UnknownNameError("demonstration mode", mode, DEMO_MODES)
        self.task, self.seed, self.mode = task, seed, mode
        self.stride = max(max_shots, 1) + 4  # spare items replace ones equal to a query
        self._shared: list[Example] | None = None

    def _shared_list(self) -> list[Example]:
        if self._shared is None:
            self._shared = [
                self.task.make_example("clean", self.seed, _SHARED_BASE + i)
                for i in range(self.stride)
            ]
        return self._shared

    def candidates(self, query: Example, query_index: int) -> list[Example]:
        """The ordered demonstration list for this query (before choosing k)."""
        if self.mode == "shared":
            pool = self._shared_list()
        else:
            v = VARIANTS.index(query.variant) if query.variant in VARIANTS else len(VARIANTS)
            base = _PER_QUERY_BASE * (1 + v) + query_index * self.stride
            pool = [
                self.task.make_example("clean", self.seed, base + j) for j in range(self.stride)
            ]
        return [d for d in pool if d.question != query.question]

    def demos(self, query: Example, query_index: int, k: int) -> list[Example]:
        return self.candidates(query, query_index)[:k]


def build_prompt(task: Task, query: Example, demos: Sequence[Example], shots: int) -> Prompt:
    prefix, text = render_prompt(task, query, demos)
    return Prompt(text=text, prefix=prefix, query=query, shots=shots, demos=tuple(demos))
