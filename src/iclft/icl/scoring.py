"""Scorers: how one model response is judged (the scorer half of inspect_ai's scorer/metric
split; the metrics over a cell's judged predictions are in :mod:`iclft.icl.metrics`).

A scorer is registered under a scoring name (:data:`iclft.records.SCORINGS`; ``auto`` is not
a scorer, it resolves per task to one of them, see :func:`iclft.icl.evaluate.scoring_for`) and
built for one protocol's judge (:data:`PROTOCOLS`)::

    score = get_scorer("generate", "exact")
    score(task, item, response) -> Score(prediction, correct, substring_correct, shortcut_answer)

``response`` is what the model produced: the generated continuation (``generate``) or the
likeliest choice (``loglik``). Evaluation, rescoring and the similarity analysis all judge
through these functions, so an item is judged one way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from iclft.errors import UnknownNameError
from iclft.tasks.base import Task

#: how an item is judged: the answer parsed from the response equals the target, or the
#: target occurs anywhere in the response (the seed paper's code)
EXACT_MATCH, SUBSTRING = "exact match", "substring"
#: protocol -> (how generation stops, see ``Engine.generate``; how an item is judged)
PROTOCOLS = {"exact": ("newline", EXACT_MATCH), "paper": ("budget", SUBSTRING)}
#: the paper protocol's token budget per task: the seed code's ``generation_len`` (its
#: test.py: expression 3, code 2, relation 2, boolean 1), counted from the answer's first
#: token (the seed's prompts end with the space before the answer, ours leave it to the
#: answer: a lone leading space is not counted, ``stop="budget"``). Parity is not in the seed:
#: one token, as for boolean (its answer is one word). Other tasks: ``max_new_tokens``.
PAPER_NEW_TOKENS = {"expression": 3, "code": 2, "relation": 2, "boolean": 1, "parity": 1}


def token_budget(protocol: str, task: str, max_new_tokens: int) -> int:
    """New tokens a generated answer of ``task`` may take under ``protocol``."""
    if protocol == "paper":
        return PAPER_NEW_TOKENS.get(task, max_new_tokens)
    return max_new_tokens


class Item(Protocol):
    """What a scorer reads of an item: its target and, where known, its shortcut answer (a
    task :class:`~iclft.tasks.Example`, a saved :class:`~iclft.records.Prediction`, ...)."""

    @property
    def target(self) -> str | None: ...

    @property
    def shortcut_target(self) -> str | None: ...


@dataclass(frozen=True)
class Score:
    """The judged fields of a :class:`~iclft.records.Prediction`."""

    #: the answer read from the response (``None``: nothing answer-like in it)
    prediction: str | None
    #: right under the protocol's judge
    correct: bool
    #: the lenient judge, kept beside every protocol: the target occurs in the response (the
    #: paper's judge) or the parsed answer equals it (so it is never below exact match)
    substring_correct: bool
    #: the answer is the item's shortcut answer
    shortcut_answer: bool


ScoreFn = Callable[[Task, Item, str], Score]
#: scoring name -> factory of its score function for one judge
SCORERS: dict[str, Callable[[str], ScoreFn]] = {}


def scorer(name: str) -> Callable[[Callable[[str], ScoreFn]], Callable[[str], ScoreFn]]:
    """Register a scorer factory ``factory(judge) -> score(task, item, response)``."""

    def register(factory: Callable[[str], ScoreFn]) -> Callable[[str], ScoreFn]:
        SCORERS[name] = factory
        return factory

    return register


def judge(answer: str | None, response: str, item: Item, how: str) -> Score:
    """The judgement every scorer shares, once the answer is read from the response.

    The lenient (substring) judge also accepts a parsed answer equal to the target: the parser
    reads a choice word in any case (``true``) and a number with a sign or leading zeros
    (``-05``), which the seed's verbatim ``str(target) in output`` would miss, so lenient
    accuracy is never below exact match on the same output."""
    exact = answer == item.target
    lenient = exact or item.target in response
    return Score(
        prediction=answer,
        correct=lenient if how == SUBSTRING else exact,
        substring_correct=lenient,
        shortcut_answer=answer == item.shortcut_target,
    )


@scorer("generate")
def generate(how: str = EXACT_MATCH) -> ScoreFn:
    """Free generation: the task's parser reads the answer from the continuation."""

    def score(task: Task, item: Item, response: str) -> Score:
        return judge(task.parse(response), response, item, how)

    return score


@scorer("loglik")
def loglik(how: str = EXACT_MATCH) -> ScoreFn:
    """Loglikelihood over the choices: the response is the likeliest choice, the answer itself."""

    def score(task: Task, item: Item, response: str) -> Score:
        return judge(response, response, item, how)

    return score


def get_scorer(scoring: str | None, protocol: str = "exact") -> ScoreFn:
    """The score function of a resolved scoring name under ``protocol``."""
    if scoring not in SCORERS:
        raise UnknownNameError("scorer", str(scoring), SCORERS)
    if protocol not in PROTOCOLS:
        raise UnknownNameError("protocol", protocol, PROTOCOLS)
    return SCORERS[scoring](PROTOCOLS[protocol][1])
