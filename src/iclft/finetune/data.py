"""Training data built from the task generators.

``tasks`` mode: a mixture over tasks, ``train_n`` items each, clean by default. Each training
text is exactly the 0-shot evaluation prompt, a space, the target and a newline (the newline
teaches the model to stop where the evaluator stops). Items come from an index range that
evaluation never uses, and any whose question an evaluation scores (test, held-out or curve
item, :mod:`iclft.tasks.splits`) is skipped and replaced by the next, so the model never
trains on a question it is scored on.

``demonstrations`` mode (Dai et al.; Deutch et al.): the k demonstrations of the shared k-shot
prompt, one training sequence each, in prompt order (they avoid the test and held-out
questions as the evaluation's prompts do; the curve's items avoid them in turn).

Labels are ``-100`` outside the loss: with ``loss_on="target"`` only the answer tokens (and the
newline) count; with ``"full"`` every token does, as the paper's code did.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from iclft.icl.prompts import DemoPool, render_prompt
from iclft.tasks import Example, get_task, splits


@dataclass(frozen=True)
class TrainText:
    task: str
    prompt: str  # the part without loss under loss_on="target"
    answer: str  # " target\n"
    question: str = ""  # the item's question (kept apart from every scored question)

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def task_texts(
    tasks: list[str],
    n: int,
    seed: int,
    variant: str = "clean",
    avoid: Mapping[str, Collection[str]] | None = None,
    skipped: dict[str, int] | None = None,
) -> list[TrainText]:
    """``n`` items per task, interleaved in a seeded random order; items whose question is in
    ``avoid[task]`` are replaced by the next (their count goes into ``skipped[task]``)."""
    out = []
    for name in tasks:
        task = get_task(name)
        items, skips = splits.draw_counted(
            task, variant, seed, splits.TRAIN_BASE, n, (avoid or {}).get(name, ())
        )
        if skipped is not None:
            skipped[name] = skips
        for ex in items:
            _, prompt = render_prompt(task, ex, [])
            out.append(TrainText(name, prompt, f" {ex.target}\n", ex.question))
    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(len(out))
    return [out[i] for i in order]


def demonstrations(task_name: str, k: int, seed: int, avoid: Collection[str] = ()) -> list[Example]:
    """The k demonstrations of the shared k-shot prompt for ``seed`` (whose pool avoids
    ``avoid``), in prompt order."""
    return DemoPool(get_task(task_name), seed, "shared", k, avoid=avoid)._shared_list()[:k]


def demonstration_texts(
    task_name: str, k: int, seed: int, avoid: Collection[str] = ()
) -> list[TrainText]:
    """The training texts of :func:`demonstrations`: one per demonstration, as it reads in the
    prompt."""
    task = get_task(task_name)
    demos = demonstrations(task_name, k, seed, avoid)
    return [TrainText(task_name, "", task.render_demo(d) + "\n", d.question) for d in demos]


@dataclass
class TrainingData:
    """A fine-tuning run's texts and its curve's items, kept apart from every scored question."""

    texts: list[TrainText]
    #: task -> variant -> the curve's items (:func:`iclft.tasks.splits.curve_items`)
    curve: dict[str, dict[str, list[Example]]]
    #: task -> training items skipped (and replaced) for repeating a scored question
    skipped: dict[str, int] = field(default_factory=dict)


def training_data(cfg) -> TrainingData:
    """The texts and curve items of the run ``cfg`` (a
    :class:`~iclft.finetune.config.FinetuneConfig`): the scored questions are the first
    ``test_n`` test items of each variant, ``heldout_n`` held-out items and the ``eval_n``
    curve items of each variant and curve task."""
    curve_tasks = list(cfg.eval_tasks or cfg.tasks)
    sizes = dict(test_n=cfg.test_n, heldout_n=cfg.heldout_n)
    if cfg.data == "demonstrations":
        name = cfg.tasks[0]
        avoid = splits.scored_questions(get_task(name), cfg.seed, **sizes)
        texts = demonstration_texts(name, cfg.shots, cfg.seed, avoid)
        demos = {t.question for t in texts}
        curve = {}
        for t in curve_tasks:
            task = get_task(t)
            apart = splits.scored_questions(task, cfg.seed, **sizes)
            apart |= demos if t == name else set()
            curve[t] = splits.curve_items(task, cfg.seed, cfg.eval_n, apart)
        return TrainingData(texts, curve)
    kept = {
        t: splits.scored(get_task(t), cfg.seed, curve_n=cfg.eval_n, **sizes)
        for t in dict.fromkeys([*cfg.tasks, *curve_tasks])
    }
    skipped: dict[str, int] = {}
    texts = task_texts(
        cfg.tasks,
        cfg.train_n,
        cfg.seed,
        cfg.train_variant,
        avoid={t: k.questions for t, k in kept.items()},
        skipped=skipped,
    )
    return TrainingData(texts, {t: kept[t].curve for t in curve_tasks}, skipped)


class TokenizedTexts:
    """A map-style dataset of ``input_ids``/``attention_mask``/``labels`` dicts."""

    def __init__(self, texts: list[TrainText], tokenizer, loss_on: str, max_length: int):
        self.rows = []
        for t in texts:
            ids = tokenizer(t.text, add_special_tokens=True)["input_ids"][:max_length]
            if loss_on == "full" or not t.prompt:
                labels = list(ids)
            else:
                n_prompt = len(tokenizer(t.prompt, add_special_tokens=True)["input_ids"])
                labels = [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
            self.rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def n_tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)
