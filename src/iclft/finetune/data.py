"""Training data built from the task generators.

``tasks`` mode: a mixture over tasks, ``train_n`` items each, clean by default. Each training
text is exactly the 0-shot evaluation prompt, a space, the target and a newline (the newline
teaches the model to stop where the evaluator stops). Items come from an index range that
evaluation never uses, so training and test items are distinct.

``demonstrations`` mode (Dai et al.; Deutch et al.): the k demonstrations of the shared k-shot
prompt, one training sequence each, in prompt order.

Labels are ``-100`` outside the loss: with ``loss_on="target"`` only the answer tokens (and the
newline) count; with ``"full"`` every token does, as the paper's code did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclft.icl.prompts import DemoPool, render_prompt
from iclft.tasks import get_task

TRAIN_INDEX_BASE = 20_000_000  # far from evaluation (0..n) and demonstration indices


@dataclass(frozen=True)
class TrainText:
    task: str
    prompt: str  # the part without loss under loss_on="target"
    answer: str  # " target\n"

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def task_texts(tasks: list[str], n: int, seed: int, variant: str = "clean") -> list[TrainText]:
    """``n`` items per task, interleaved in a seeded random order."""
    out = []
    for name in tasks:
        task = get_task(name)
        for i in range(n):
            ex = task.make_example(variant, seed, TRAIN_INDEX_BASE + i)
            _, prompt = render_prompt(task, ex, [])
            out.append(TrainText(name, prompt, f" {ex.target}\n"))
    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(len(out))
    return [out[i] for i in order]


def demonstration_texts(task_name: str, k: int, seed: int) -> list[TrainText]:
    """The k demonstrations of the shared k-shot prompt for ``seed``, in prompt order."""
    task = get_task(task_name)
    pool = DemoPool(task, seed, "shared", k)
    demos = pool._shared_list()[:k]
    return [TrainText(task_name, "", task.render_demo(d) + "\n") for d in demos]


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
