"""Trainer callbacks: learning curves, a NaN guard, and a rich progress bar with the loss."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from transformers import TrainerCallback

from iclft.icl.engine import Engine
from iclft.icl.evaluate import EvalSpec, evaluate_task
from iclft.tasks import get_task

CURVE_FIELDS = [
    "step",
    "examples_seen",
    "loss",
    "learning_rate",
    "task",
    "variant",
    "accuracy",
    "correct",
    "n",
]


class CurveCallback(TrainerCallback):
    """Every ``eval_every`` steps (and before and after training) evaluate 0-shot accuracy on
    held-out clean and misleading items of each task with the batched engine and append the
    rows to ``curves.csv`` at once, so an interrupted run keeps its curve. Rank 0 only."""

    def __init__(self, path: Path, tokenizer, tasks, eval_n, seed, eval_every, examples_per_step):
        self.path, self.tok = Path(path), tokenizer
        self.spec = EvalSpec(tasks=tuple(tasks), shots=(0,), n=eval_n, seed=seed).check()
        self.eval_every, self.per_step = eval_every, examples_per_step
        self.last_loss: float | None = None
        self.last_lr: float | None = None
        self.done_steps: set[int] = set()
        if self.path.exists():  # resumed run: keep what is there, skip steps already written
            with open(self.path) as f:
                self.done_steps = {int(r["step"]) for r in csv.DictReader(f)}

    def evaluate(self, model, step: int) -> list[dict]:
        was_training = model.training
        model.eval()
        engine = Engine(model, self.tok, batch_size=16)
        rows = []
        for name in self.spec.tasks:
            cell = evaluate_task(engine, get_task(name), self.spec, model_label="training")
            for r in cell.results:
                rows.append(
                    {
                        "step": step,
                        "examples_seen": step * self.per_step,
                        "loss": self.last_loss,
                        "learning_rate": self.last_lr,
                        "task": name,
                        "variant": r["variant"],
                        "accuracy": r["accuracy"],
                        "correct": r["correct"],
                        "n": r["n"],
                    }
                )
        if was_training:
            model.train()
        return rows

    def _record(self, args, state, model) -> None:
        step = state.global_step
        if not state.is_world_process_zero or step in self.done_steps:
            return
        rows = self.evaluate(model, step)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        self.done_steps.add(step)

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._record(args, state, model)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
        if logs and "learning_rate" in logs:
            self.last_lr = float(logs["learning_rate"])

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.eval_every and state.global_step % self.eval_every == 0:
            self._record(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kw):
        self._record(args, state, model)


class NanGuard(TrainerCallback):
    """Stop at the first non-finite loss and never save a checkpoint of that step."""

    def __init__(self):
        self.bad_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = state.global_step
            control.should_training_stop = True
            control.should_save = False


class RichProgress(TrainerCallback):
    """One progress bar with the current loss (replaces the Trainer's tqdm and log printing)."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar, self.job, self.loss = enabled, None, None, None

    def on_train_begin(self, args, state, control, **kw):
        if not (self.enabled and state.is_world_process_zero):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]finetune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.bar.start()
        self.job = self.bar.add_task("train", total=state.max_steps, loss="-")
        self.bar.update(self.job, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(self.job, loss=f"{logs['loss']:.4f}")

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(self.job, completed=state.global_step)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
