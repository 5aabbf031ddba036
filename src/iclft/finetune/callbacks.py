"""Trainer callbacks: learning curves, a NaN guard, checkpoints at listed steps, fault points,
and training progress."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from iclft.errors import UserError
from iclft.faults import kill_point
from iclft.finetune.config import check_eval_checkpoints, check_schedule
from iclft.icl.engine import Engine
from iclft.icl.evaluate import evaluate_task
from iclft.icl.settings import BATCH_SIZE
from iclft.logs import Progress
from iclft.records import CURVE_FIELDS, CURVE_ITEMS, CurvePoint
from iclft.store import write_text_atomic
from iclft.tasks import get_task


class CurveCallback(TrainerCallback):
    """Every ``eval_every`` steps (and before and after training) evaluate 0-shot accuracy on
    the curve's held-out items (``items``: task -> variant -> items, their own index range,
    :func:`iclft.tasks.splits.curve_items`) with the batched engine and the run's scoring
    (``spec``), next to that step's logged loss and learning rate, and rewrite ``curves.csv``
    atomically at once, so an interrupted run keeps its curve and a resumed one continues it.
    Rank 0 only. Nothing is recorded once ``guard`` has stopped training on non-finite values.
    Step 0 is the base model scored as the baseline cell scores it, on the same items."""

    def __init__(self, path: Path, tokenizer, spec, items, examples_per_step, eval_every, guard):
        self.path, self.tok, self.spec, self.items = Path(path), tokenizer, spec, items
        self.eval_every, self.per_step, self.guard = eval_every, examples_per_step, guard
        self.rows: list[CurvePoint] = []
        if self.path.exists():  # resumed run: keep what is there, skip steps already written
            with open(self.path, newline="") as f:
                self.rows = [
                    CurvePoint.from_json(r, f"{self.path}:{ln}")
                    for ln, r in enumerate(csv.DictReader(f), 2)
                ]
        self.done_steps = {p.step for p in self.rows}
        #: ``trainer.log`` when the run reports to training loggers (set by the trainer)
        self.log: Callable[[dict[str, float]], None] | None = None

    def evaluate(self, model, step: int, loss=None, lr=None) -> list[CurvePoint]:
        was_training = model.training
        model.eval()
        budget = self.spec.max_new_tokens
        engine = Engine(model, self.tok, batch_size=BATCH_SIZE, max_new_tokens=budget)
        rows = []
        for name in self.spec.tasks:
            cell = evaluate_task(
                engine,
                get_task(name),
                self.spec,
                model_label="training",
                items=self.items[name],
                split=CURVE_ITEMS,
            )
            for r in cell.results:
                rows.append(
                    CurvePoint(
                        step=step,
                        examples_seen=step * self.per_step,
                        loss=loss,
                        learning_rate=lr,
                        task=name,
                        variant=r.variant,
                        accuracy=r.accuracy,
                        correct=r.correct,
                        n=r.n,
                        items=CURVE_ITEMS,
                        scoring=r.scoring,
                        protocol=r.protocol,
                    )
                )
        if was_training:
            model.train()
        return rows

    def _record(self, state, model, loss=None, lr=None) -> None:
        step = state.global_step
        if not state.is_world_process_zero or step in self.done_steps or self.guard.tripped:
            return
        points = self.evaluate(model, step, loss, lr)
        self.rows += points
        if self.log is not None:  # the training logs (TensorBoard, W&B) get the points too
            self.log({f"curve/{p.task}/{p.variant}/accuracy": p.accuracy for p in points})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CURVE_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(p.to_json() for p in self.rows)
        write_text_atomic(self.path, buf.getvalue())
        self.done_steps.add(step)

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._record(state, model)

    def on_log(self, args, state, control, logs=None, model=None, **kw):
        # a step's loss is logged after its update: the curve point pairs it with the
        # accuracy of the same weights
        if logs and "loss" in logs and self.eval_every and state.global_step % self.eval_every == 0:
            self._record(state, model, float(logs["loss"]), logs.get("learning_rate"))

    def on_train_end(self, args, state, control, model=None, **kw):
        logged = [h for h in state.log_history if h.get("step") == state.global_step]
        last = next((h for h in reversed(logged) if "loss" in h), {})
        self._record(state, model, last.get("loss"), last.get("learning_rate"))


def nonfinite_parameters(model) -> list[str]:
    """Names of the trainable parameters holding a NaN or an infinity (one device sync)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu()
    return [n for (n, _), good in zip(named, ok.tolist()) if not good]


class NanGuard(TrainerCallback):
    """Stop at the first update that leaves a trainable parameter non-finite, or the first
    non-finite loss, and never save a checkpoint of that step. It runs before the Trainer's
    logging and saving of each step, so every checkpoint on disk holds finite weights."""

    def __init__(self):
        self.bad_step: int | None = None
        self.reason: str | None = None
        self.bad_parameters: list[str] = []

    @property
    def tripped(self) -> bool:
        return self.bad_step is not None

    def _trip(self, state, control, reason: str) -> None:
        if not self.tripped:
            self.bad_step, self.reason = state.global_step, reason
        control.should_training_stop = True
        control.should_save = False
        control.should_log = False
        control.should_evaluate = False

    def on_step_end(self, args, state, control, model=None, **kw):
        bad = nonfinite_parameters(model) if model is not None else []
        if bad:
            self.bad_parameters = bad
            self._trip(state, control, f"{len(bad)} trainable tensors became NaN or infinite")

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._trip(state, control, f"the loss became {float(loss)}")


class SaveAtSteps(TrainerCallback):
    """Save a checkpoint at each listed step (``eval_checkpoints``), whatever ``save_every``
    says. Registered before :class:`NanGuard`, which still vetoes the save of a diverged step.
    Where the data decides the run's length (epochs, demonstrations), the steps are checked
    against it here, before the first step."""

    def __init__(self, steps):
        self.steps = sorted(steps)

    def on_train_begin(self, args, state, control, **kw):
        try:
            check_eval_checkpoints(self.steps, state.max_steps)
        except ValueError as e:
            raise UserError(f"invalid fine-tuning settings: eval_checkpoints: {e}") from None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in self.steps:
            control.should_save = True


class ScheduleCheck(TrainerCallback):
    """Before the first step, with the run's length as the Trainer counts it (epochs and
    demonstrations mode are known only here): refuse a warm-up as long as the run and a
    learning rate that is 0 at every step (:func:`~iclft.finetune.config.check_schedule`)."""

    def on_train_begin(self, args, state, control, **kw):
        schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        total = state.max_steps
        try:
            check_schedule(schedule, args.learning_rate, args.get_warmup_steps(total), total)
        except ValueError as e:
            raise UserError(f"invalid fine-tuning settings: {e}") from None


def learning_rates(log_history: list[dict]) -> dict[str, float]:
    """``{step: learning rate}``: the rate each logged step was trained at (transformers logs
    the rate of the step's update, before the scheduler moves on)."""
    return {
        str(h["step"]): float(h["learning_rate"])
        for h in log_history
        if "learning_rate" in h and "loss" in h
    }


class AlreadyTrained(Exception):
    """Raised by :class:`StopWhenTrained` to leave ``Trainer.train`` before any step."""


class StopWhenTrained(TrainerCallback):
    """Resuming from a checkpoint that already reached ``max_steps``: the Trainer (5.x) would
    still take one more step, so stop before it, with the checkpoint's weights and state
    restored (they are loaded before ``on_train_begin``)."""

    def on_train_begin(self, args, state, control, **kw):
        if 0 < state.max_steps <= state.global_step:
            raise AlreadyTrained


class FaultPoints(TrainerCallback):
    """The trainer's named kill points (:mod:`iclft.faults`): ``train-step:<S>``."""

    def on_step_end(self, args, state, control, **kw):
        kill_point(f"train-step:{state.global_step}")


class StepProgress(TrainerCallback):
    """Training progress with the last logged loss (:func:`iclft.logs.progress`: a bar on a
    terminal, plain lines elsewhere); replaces the Trainer's tqdm and log printing."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.shown, self.task = enabled, None, None

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        self.shown = Progress(self.enabled).start()
        self.task = self.shown.task("finetune", state.max_steps, note="loss -")
        self.task.update(completed=state.global_step)

    # A step that logs (the Flow callback, which runs first, set should_log) is counted in
    # on_log, after its step end, so the line of that step carries its own loss.
    def on_log(self, args, state, control, logs=None, **kw):
        if self.task is not None and logs and "loss" in logs:
            self.task.update(completed=state.global_step, note=f"loss {logs['loss']:.4f}")

    def on_step_end(self, args, state, control, **kw):
        if self.task is not None and not control.should_log:
            self.task.update(completed=state.global_step)

    def on_train_end(self, args, state, control, **kw):
        if self.shown is not None:
            self.shown.stop()
            self.shown = self.task = None
