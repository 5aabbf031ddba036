"""Which items each use of a task draws, and the questions no training data may repeat.

Items of one (task, variant, seed) are numbered (:func:`iclft.tasks.base.example_rng`); each
use draws from its own index range, clean items unless said otherwise:

==============================  ==========================================================
``0 .. n-1``                    test queries, each variant (``n``)
``HELDOUT_BASE ..``             held-out clean queries on which the best k is chosen
                                (``heldout_n``); one equal to a test question is dropped
``CURVE_BASE ..``               fine-tuning curve items, each variant (``eval_n``)
``1_000_000 .. 4_200_000``      demonstrations, shared mode (:mod:`iclft.icl.prompts`)
``10_000_000 ..``               demonstrations, per-query mode (:mod:`iclft.icl.prompts`)
``TRAIN_BASE ..``               fine-tuning texts (the training variant)
==============================  ==========================================================

Different indices can still spell the same question (boolean's question space is small: 6 of
199 test questions came back among 1000 training texts before this rule), so the *scored*
questions (test, held-out and curve items: :func:`scored_questions`) are kept apart by text
too. Curve items skip test and held-out questions; training texts skip every scored
question; an evaluation's demonstrations skip its test and held-out questions (the similarity
analysis instead drops a query that is one of its demonstrations); each skips and draws the
next index (:func:`draw`), so the sizes asked
for are the sizes drawn.

:data:`ITEM_LAYOUT` numbers this layout; fine-tuning directories and run stages record it, and
ones written under another layout are not resumed (their curves and training texts differ).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from iclft.errors import UserError
from iclft.tasks.base import VARIANTS, Example, Task

#: 1: curves scored the first ``eval_n`` test items, and training texts and demonstrations were
#: kept apart from their own query only; 2: curve items have their own range, and training texts
#: and demonstrations skip every scored question (the layout above)
ITEM_LAYOUT = 2
#: the key that records it (in ``train_config.json``, stage records, manifests)
ITEM_LAYOUT_KEY = "item_layout"
HELDOUT_BASE = 5_000_000
CURVE_BASE = 7_000_000
TRAIN_BASE = 20_000_000
#: how many indices :func:`draw` may skip per item drawn before it gives up
MAX_SKIPS_PER_ITEM = 50


def draw(
    task: Task, variant: str, seed: int, start: int, n: int, avoid: Collection[str] = ()
) -> list[Example]:
    """``n`` items from index ``start`` on, skipping (and replacing by the next index) any whose
    question is in ``avoid``."""
    return draw_counted(task, variant, seed, start, n, avoid)[0]


def draw_counted(
    task: Task, variant: str, seed: int, start: int, n: int, avoid: Collection[str] = ()
) -> tuple[list[Example], int]:
    """:func:`draw`, and how many indices it skipped."""
    out: list[Example] = []
    limit = start + n * (1 + MAX_SKIPS_PER_ITEM) + 100
    i = start
    while len(out) < n:
        if i >= limit:
            raise UserError(
                f"{task.name}: only {len(out)} of {n} {variant} items from index {start} differ "
                f"from the {len(avoid)} scored questions; use fewer items or another seed"
            )
        ex = task.make_example(variant, seed, i)
        if ex.question not in avoid:
            out.append(ex)
        i += 1
    return out, i - start - n


def questions_tested(task: Task, seed: int, n: int, variants: Sequence[str] = VARIANTS) -> set[str]:
    """The questions of the first ``n`` test items of each variant."""
    return {q.question for v in variants for q in task.generate(v, n, seed)}


def heldout_items(task: Task, seed: int, n: int, test: Collection[str]) -> list[Example]:
    """The ``n`` held-out clean items, less any whose question is a test question (``test``)."""
    return [
        q for q in task.generate("clean", n, seed, start=HELDOUT_BASE) if q.question not in test
    ]


def curve_items(
    task: Task, seed: int, n: int, avoid: Collection[str], variants: Sequence[str] = VARIANTS
) -> dict[str, list[Example]]:
    """The fine-tuning curve's ``n`` items of each variant: their own index range, skipping any
    question in ``avoid`` (the test and held-out questions)."""
    return {v: draw(task, v, seed, CURVE_BASE, n, avoid) for v in variants}


@dataclass(frozen=True)
class Scored:
    """What evaluations of one (task, seed) score: the curve's items of each variant, and every
    scored question (test, held-out and curve items), which training data must avoid."""

    curve: dict[str, list[Example]]
    questions: frozenset[str]


def scored(task: Task, seed: int, *, test_n: int, heldout_n: int = 0, curve_n: int = 0) -> Scored:
    """The first ``test_n`` test items of each variant, ``heldout_n`` held-out items and
    ``curve_n`` curve items of each variant (drawn apart from the other two)."""
    test = questions_tested(task, seed, test_n)
    held = {q.question for q in heldout_items(task, seed, heldout_n, test)}
    curve = curve_items(task, seed, curve_n, test | held) if curve_n else {}
    return Scored(curve, frozenset(test | held | {q.question for c in curve.values() for q in c}))


def scored_questions(
    task: Task, seed: int, *, test_n: int, heldout_n: int = 0, curve_n: int = 0
) -> frozenset[str]:
    """Every question :func:`scored` holds."""
    return scored(task, seed, test_n=test_n, heldout_n=heldout_n, curve_n=curve_n).questions
