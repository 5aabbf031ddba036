"""The evaluation's settings, each declared once (default, bounds, help text on the field):
``iclft eval``'s and ``iclft export lm-eval``'s options are generated from
:class:`EvalSettings` (:mod:`iclft.cli.fields`), and an experiment config extends it
(:class:`iclft.run.config.ExperimentConfig`), so its top-level evaluation settings are these
fields. :class:`EvalSpec` is the settings applied to a grid of cells with one seed. Everything is
validated when built, before any model is loaded. No torch here: the config reads this module.
"""

from __future__ import annotations

import copy
from typing import Annotated

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo

from iclft.errors import UserError
from iclft.icl.prompts import CHAT_MODES, DEMO_MODES, MAX_DEMO_SETS
from iclft.icl.scoring import PROTOCOLS
from iclft.records import SCORINGS
from iclft.tasks import VARIANTS, get_task, task_names
from iclft.validation import Settings, known

#: evaluation rows per forward, unless told otherwise (or ``auto``: the largest that fits)
BATCH_SIZE = 16
#: tokens generated at most per answer under the exact protocol, unless told otherwise
MAX_NEW_TOKENS = 10


#: a task name, checked against the registry when validated (so plugin tasks count)
TaskName = Annotated[str, known("task", task_names)]
VariantName = Annotated[str, known("variant", VARIANTS)]


class EvalSettings(Settings):
    """How cells are evaluated, each setting declared once: ``iclft eval``'s (and ``iclft export
    lm-eval``'s) options are generated from these fields, and an experiment config's top-level
    evaluation settings are this model (:class:`iclft.run.config.ExperimentConfig` extends it)."""

    n: int = Field(50, ge=1, description="Test items per (task, variant).")
    demos: Annotated[str, known("demonstration mode", DEMO_MODES)] = Field(
        "shared", description=f"Demonstrations: {' or '.join(DEMO_MODES)}."
    )
    scoring: Annotated[str, known("scoring", SCORINGS)] = Field(
        "generate", description=f"Scoring: {', '.join(SCORINGS)}."
    )
    protocol: Annotated[str, known("protocol", tuple(PROTOCOLS))] = Field(
        "exact",
        description="exact (skip leading newlines, stop at the next, exact match) or paper (the "
        "seed code: each task's 1-3 token budget with no stop, target as a substring).",
    )
    demo_sets: int = Field(
        1,
        ge=1,
        le=MAX_DEMO_SETS,
        description="Independent demonstration sets per k-shot cell; with 2+, intervals are the "
        "crossed-design t over sets and items.",
    )
    heldout_n: int = Field(
        0,
        ge=0,
        description="Held-out clean items per k-shot cell, on which `iclft report` chooses the "
        "best k.",
    )
    chat_template: Annotated[str, known("chat template mode", CHAT_MODES)] = Field(
        "none",
        description="none (plain prompts), turns (each demonstration a user and an assistant "
        "turn) or single (one user turn) in the tokenizer's chat template, for "
        "instruction-tuned models.",
    )
    max_new_tokens: int = Field(
        MAX_NEW_TOKENS, ge=1, description="Tokens generated at most per answer (exact protocol)."
    )

    @model_validator(mode="after")
    def _paper_generates(self) -> EvalSettings:
        if self.protocol == "paper" and self.scoring == "loglik":
            raise ValueError(
                "protocol: the paper protocol generates text for every task; use scoring "
                "generate or auto with protocol paper"
            )
        return self


def eval_field(name: str, description: str) -> FieldInfo:
    """:class:`EvalSettings`' field ``name`` (its check, bounds and default) for another model
    that reads the same evaluation setting under its own help text: the fine-tuning curve is
    scored like an evaluation (:class:`iclft.finetune.config.FinetuneConfig`)."""
    info = copy.copy(EvalSettings.model_fields[name])
    info.description = description
    return info


class EvalSpec(EvalSettings):
    """The settings applied to a grid of cells (tasks x variants x shots) with one seed: what
    :func:`evaluate_task` and :func:`run_eval` evaluate. Validated when built."""

    tasks: tuple[TaskName, ...] = Field(min_length=1)
    variants: tuple[VariantName, ...] = Field(VARIANTS, min_length=1)
    shots: tuple[Annotated[int, Field(ge=0)], ...] = Field((0,), min_length=1)
    seed: int = Field(0, ge=0)
    #: label for results rows; default: baseline (0-shot) / icl
    method: str | None = None

    @model_validator(mode="after")
    def _loglik_needs_choices(self) -> EvalSpec:
        problem = loglik_problem(self.scoring, self.tasks)
        if problem:
            raise ValueError(problem)
        return self


def loglik_problem(scoring: str, tasks) -> str | None:
    """Why ``scoring`` cannot score ``tasks`` (loglik reads a choice, so every task must be a
    choice task), or ``None``: the check an evaluation spec and an experiment config share."""
    free = [t for t in tasks if not get_task(t).is_choice] if scoring == "loglik" else []
    if not free:
        return None
    return (
        f"loglik scoring needs choice tasks, but {', '.join(free)} has free answers "
        "(use scoring generate or auto)"
    )


def parse_batch_size(value: int | str) -> int | str:
    """A batch size: a positive integer, or ``auto`` (the largest that fits, found by halving
    on out-of-memory)."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    try:
        whole = not isinstance(value, bool) and not (isinstance(value, float) and value % 1)
        n = int(value) if whole else 0
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UserError(f"batch size must be a positive integer or 'auto', got {value!r}")
    return n
