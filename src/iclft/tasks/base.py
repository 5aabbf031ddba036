"""The task abstraction: an :class:`Example` record and the :class:`Task` interface.

A task is three swappable parts (as in inspect_ai): a *generator* that makes examples
deterministically from ``(task, variant, seed, index)``, a *renderer* that turns an example
into prompt text, and a *parser* that turns a model's raw continuation into an answer.
"""

from __future__ import annotations

import json
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from iclft.errors import UnknownNameError, UserError

VARIANTS: tuple[str, ...] = ("clean", "misleading")


@dataclass(frozen=True)
class Example:
    """One task item, as in the data contract of docs/tasks.md (one JSON line)."""

    id: str
    task: str
    variant: str
    question: str
    target: str
    shortcut_target: str
    choices: tuple[str, ...] | None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "variant": self.variant,
            "question": self.question,
            "target": self.target,
            "shortcut_target": self.shortcut_target,
            "choices": list(self.choices) if self.choices is not None else None,
            "meta": _plain(self.meta),
        }

    def to_json(self) -> str:
        """One JSON line; key order follows the contract so files are byte-stable."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        missing = [k for k in ("id", "task", "variant", "question", "target") if k not in d]
        if missing:
            raise UserError(f"example is missing keys {missing}; got keys {sorted(d)}")
        choices = d.get("choices")
        return cls(
            id=str(d["id"]),
            task=str(d["task"]),
            variant=str(d["variant"]),
            question=str(d["question"]),
            target=str(d["target"]),
            shortcut_target=str(d.get("shortcut_target", d["target"])),
            choices=tuple(choices) if choices is not None else None,
            meta=dict(d.get("meta") or {}),
        )


def _plain(obj: Any) -> Any:
    """Turn tuples/np scalars inside ``meta`` into JSON-native values."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def example_rng(task: str, variant: str, seed: int, index: int) -> np.random.Generator:
    """The random stream of one example: a pure function of (task, variant, seed, index).

    Examples are independent of ``n``, so the first 10 of a 100-item file equal a 10-item file.
    """
    if int(seed) < 0 or int(index) < 0:
        raise UserError(f"seed and index must be non-negative integers, got {seed} and {index}")
    key = [zlib.crc32(task.encode()), zlib.crc32(variant.encode()), int(seed), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def balanced_label(task: str, variant: str, seed: int, index: int, labels: Sequence[str]) -> str:
    """Label for ``index`` such that every consecutive block of ``len(labels)`` items holds each
    label once, in a seeded random order: any prefix of n items is balanced to within one."""
    block, pos = divmod(int(index), len(labels))
    rng = example_rng(task, variant + "/labels", seed, block)
    return labels[int(rng.permutation(len(labels))[pos])]


class Task(ABC):
    """A task with an implicit pattern. Subclasses set the class attributes and implement
    :meth:`make_example`; everything else (ids, rendering, parsing) is shared."""

    name: ClassVar[str]
    #: one line: what the implicit pattern is (shown by ``iclft tasks``)
    description: ClassVar[str]
    #: the instruction line that opens every prompt
    instruction: ClassVar[str]
    #: text after the question, which the answer follows (``The result is:``)
    answer_lead: ClassVar[str] = "The result is:"
    #: candidate answers for choice tasks; ``None`` for free-answer tasks
    choices: ClassVar[tuple[str, ...] | None] = None
    #: what a model that answers only by the shortcut scores on misleading items (its score on
    #: clean items is 1 by construction); ``None`` when a task does not declare it
    shortcut_accuracy_misleading: ClassVar[float | None] = None

    @property
    def is_choice(self) -> bool:
        return self.choices is not None

    # ----- generation -------------------------------------------------------------------
    @abstractmethod
    def make_example(self, variant: str, seed: int, index: int) -> Example:
        """Build item ``index`` of (variant, seed) deterministically."""

    def example_id(self, variant: str, seed: int, index: int) -> str:
        return f"{self.name}-{variant}-{seed}-{index:06d}"

    def generate(self, variant: str, n: int, seed: int = 0, start: int = 0) -> list[Example]:
        """Items ``start .. start+n-1`` of (variant, seed)."""
        check_variant(variant)
        if not isinstance(n, int) or n < 0:
            raise UserError(f"n must be a non-negative integer, got {n!r}")
        return [self.make_example(variant, seed, i) for i in range(start, start + n)]

    def rng(self, variant: str, seed: int, index: int) -> np.random.Generator:
        return example_rng(self.name, variant, seed, index)

    # ----- rendering --------------------------------------------------------------------
    def render_query(self, example: Example) -> str:
        """The example as the model sees it when it must answer: question and answer lead."""
        return f"{example.question}\n{self.answer_lead}"

    def render_demo(self, example: Example) -> str:
        """The example with its answer, as a demonstration (or a training text)."""
        return f"{self.render_query(example)} {example.target}"

    # ----- parsing ----------------------------------------------------------------------
    def parse(self, output: str) -> str | None:
        """Turn a raw continuation into an answer; ``None`` when nothing answer-like is there."""
        text = output.strip()
        if self.choices is not None:
            m = re.match(r"[A-Za-z]+", text)
            if not m:
                return None
            word = m.group(0).lower()
            for c in self.choices:
                if c.lower() == word:
                    return c
            return None
        m = re.match(r"[-+]?\d+", text)
        return str(int(m.group(0))) if m else None


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise UnknownNameError("variant", variant, VARIANTS)
    return variant
