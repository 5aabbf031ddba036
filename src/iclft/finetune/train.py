"""Fine-tuning with transformers' ``Trainer``: one shared wiring for every method.

``run_finetune`` validates everything it can before loading the model (settings, the output
directory, LoRA target modules and K/V modules, checked on a weightless meta-device copy of the
architecture), then trains, writes ``curves.csv`` as it goes, checkpoints (every ``save_every``
steps and at each step of ``eval_checkpoints``), and saves a final model that ``iclft eval
--model DIR`` loads directly (full weights as safetensors, or a LoRA adapter whose
``base_model_name_or_path`` names the base model); so does a complete checkpoint,
``DIR/checkpoints/checkpoint-<step>``.

Nothing non-finite is ever saved: :class:`~iclft.finetune.callbacks.NanGuard` checks the
trainable parameters after every update (and the loss), stops before the step is logged or
checkpointed, and the run ends with :class:`TrainingDiverged`, a manifest that says why, and
the last good checkpoint untouched. The final model is written to a staging directory and moved
into place; ``manifest.json`` (``status: complete``) is written last and marks the directory as
a finished model (the loader refuses one without it).

Distributed: launched with ``accelerate launch -m iclft finetune ...`` the Trainer runs DDP
(FSDP/DeepSpeed through the user's accelerate config); curves are evaluated and written by
rank 0 only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from iclft.distributed import launched_processes
from iclft.errors import TrainingDiverged, UserError
from iclft.faults import kill_point
from iclft.finetune.callbacks import (
    AlreadyTrained,
    CurveCallback,
    FaultPoints,
    NanGuard,
    SaveAtSteps,
    ScheduleCheck,
    StepProgress,
    StopWhenTrained,
    learning_rates,
)
from iclft.finetune.config import FinetuneConfig, make_config, per_process_batch
from iclft.finetune.data import TokenizedTexts, training_data
from iclft.finetune.methods import Method, trainable_count
from iclft.layout import (
    CHECKPOINTS_DIR,
    COMPLETE,
    DIVERGED,
    TRAIN_CONFIG_NAME,
    checkpoint_complete,
    checkpoint_dir,
)
from iclft.models.anatomy import anatomy, family_for
from iclft.store import (
    MANIFEST_NAME,
    WriteError,
    claim_output_dir,
    dir_lock,
    ensure_writable_dir,
    move_aside,
    write_json_atomic,
    write_manifest,
)
from iclft.tasks.splits import CURVE_BASE, ITEM_LAYOUT, ITEM_LAYOUT_KEY, TRAIN_BASE

#: Dai et al.'s and Deutch et al.'s SGD on the demonstrations (``data: demonstrations``), as
#: TrainingArguments over the settings: batch 1, one epoch in prompt order, plain SGD at a
#: constant lr, no gradient clipping (:mod:`iclft.finetune.gd` runs the same loop in memory)
DEMONSTRATIONS_RECIPE = {
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_grad_norm": 0.0,
    "optim": "sgd",
    "train_sampling_strategy": "sequential",
}


@dataclass
class FinetuneResult:
    out_dir: Path
    steps: int
    final_loss: float | None
    train_seconds: float
    trainable: int
    total: int
    examples_per_step: int  # the effective batch: per-device batch x accumulation x processes


@dataclass(frozen=True)
class SavedModel:
    """A model a finished fine-tuning run saved: a checkpoint or the final model."""

    path: Path
    step: int  # optimizer steps it was trained for
    examples_seen: int  # step x the effective batch
    final: bool


def saved_models(out_dir: Path, eval_checkpoints: Sequence[int]) -> list[SavedModel]:
    """The checkpoints of ``eval_checkpoints`` before the final step, then the final model (a
    listed final step is the final model), of the finished run in ``out_dir``, by step."""
    from iclft.store import MANIFEST_NAME

    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    final, per_step = manifest.get("steps"), manifest.get("examples_per_step")
    if manifest.get("status") != COMPLETE or final is None or per_step is None:
        raise UserError(
            f"{out_dir} is not a finished fine-tuning run of this iclft version (its "
            f"{MANIFEST_NAME} lacks a complete status, steps or examples_per_step); train again"
        )
    out = []
    for step in sorted(set(eval_checkpoints) - {final}):
        path = checkpoint_dir(out_dir, step)
        if step > final or not checkpoint_complete(path):
            raise UserError(
                f"{path}: the checkpoint of step {step} (eval_checkpoints) is missing or "
                f"incomplete; the run ended at step {final}"
            )
        out.append(SavedModel(path, step, step * per_step, final=False))
    return out + [SavedModel(out_dir, final, final * per_step, final=True)]


def saved_settings(cfg: FinetuneConfig) -> dict:
    """``train_config.json``: the run's settings and the item layout its data was drawn under."""
    return {**json.loads(cfg.model_dump_json()), ITEM_LAYOUT_KEY: ITEM_LAYOUT}


def _check_out_dir(out_dir: Path, cfg: FinetuneConfig, resume: bool, force: bool) -> None:
    """A new or empty directory, or this run (only with ``resume``). A different run, this run
    without ``resume``, or a non-empty directory another command wrote is refused unless
    ``force``: its contents are then moved aside to ``OUT.replaced-N``. A run drawn under
    another item layout is refused (its curve and training texts differ)."""
    claim = claim_output_dir(out_dir, "finetune", force=force)
    saved = out_dir / TRAIN_CONFIG_NAME
    if claim.state != "own" or not saved.exists():
        return
    old = json.loads(saved.read_text())
    layout = old.get(ITEM_LAYOUT_KEY, 1)
    if layout != ITEM_LAYOUT:
        raise UserError(
            f"output directory {str(out_dir)!r} holds a fine-tuning run drawn under iclft's "
            f"item layout {layout} (its curve scored test items; its training texts could repeat "
            f"scored questions); this version draws layout {ITEM_LAYOUT} and cannot resume or "
            "extend it: choose a new directory"
        )
    new = saved_settings(cfg)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        why = f"holds a different fine-tuning run (settings differ: {', '.join(diff)}); choose"
    elif not resume:
        why = "already holds this run; pass --resume to continue it, choose"
    else:
        return
    if not force:
        raise UserError(
            f"output directory {str(out_dir)!r} {why} another directory, or --force to move "
            f"it aside to {out_dir.name}.replaced-N"
        )
    move_aside(out_dir)
    claim_output_dir(out_dir, "finetune")


def _check_model_modules(cfg: FinetuneConfig) -> None:
    """Check LoRA targets and K/V modules on a meta-device copy: no weights are loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from iclft.models.loading import resolve_model

    resolved = resolve_model(cfg.model)
    source = resolved.base.path if resolved.is_adapter and resolved.base else resolved.path
    mcfg = AutoConfig.from_pretrained(str(source) if source else cfg.model)
    family_for(mcfg.model_type)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(mcfg)
    cfg.strategy.check(meta, cfg)
    anatomy(meta)  # an unsupported family fails here, before any weight is read


def _make_trainer_class():
    from transformers import Trainer

    class ICLFTTrainer(Trainer):
        """Trainer whose loss is the method's (:meth:`Method.loss`), else the model's own."""

        method: Method
        base_spec: str | None = None  # LoRA: the base model's spec, written into checkpoints

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = self.method.loss(model, inputs, num_items_in_batch)
            if loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer does for its own loss
            return (loss, None) if return_outputs else loss

        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)
            adapter = Path(output_dir or self.args.output_dir) / "adapter_config.json"
            if self.base_spec and self.args.should_save and adapter.is_file():
                # a checkpoint's adapter names its base as the final one does (the spec given,
                # not the directory it was loaded from); peft's own save must not see an alias
                # there (it would ask the hub whether the embeddings were resized)
                meta = json.loads(adapter.read_text())
                meta["base_model_name_or_path"] = self.base_spec
                write_json_atomic(adapter, meta)

        def _save_optimizer_and_scheduler(self, output_dir):
            # a named kill point mid-checkpoint: the weights are written, the rest is not
            kill_point(f"checkpoint-save:{self.state.global_step}")
            super()._save_optimizer_and_scheduler(output_dir)

    return ICLFTTrainer


def _last_checkpoint(ckpt_dir: Path, *, drop_incomplete: bool = False) -> str | None:
    """The newest complete checkpoint (``checkpoint-N`` with a readable trainer_state.json).

    ``drop_incomplete`` deletes checkpoints a killed save left half-written (the caller holds
    the directory's lock), so the Trainer neither resumes from nor rotates onto them."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not ckpt_dir.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for d in ckpt_dir.iterdir():
        step = d.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if not (d.is_dir() and step.isdigit()):
            continue
        if checkpoint_complete(d):
            found.append((int(step), d))
        elif drop_incomplete:
            shutil.rmtree(d, ignore_errors=True)
    return str(max(found)[1]) if found else None


def run_finetune(
    cfg: FinetuneConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    extra_callbacks: list | None = None,
    force: bool = False,
) -> FinetuneResult:
    """Train ``cfg.model`` with ``cfg.method`` and write the run into ``out_dir`` (whose lock
    rank 0 holds throughout: one writer per directory). ``out_dir``: see
    :func:`_check_out_dir`."""
    from contextlib import nullcontext

    cfg = make_config(**cfg.model_dump())  # a model_copy/model_construct skips validation
    out_dir = Path(out_dir)
    rank = int(os.environ.get("RANK", "0"))
    with dir_lock(out_dir) if rank == 0 else nullcontext():
        return _run_finetune(cfg, out_dir, rank, resume, show_progress, extra_callbacks, force)


def _run_finetune(
    cfg, out_dir, rank, resume, show_progress, extra_callbacks, force=False
) -> FinetuneResult:
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from iclft.models.loading import load_model, resolve_device

    if cfg.data == "tasks":  # refused before anything is written or moved aside
        per_process_batch(cfg.batch_size, launched_processes())
    if rank == 0:  # other ranks would see the settings rank 0 is about to write
        _check_out_dir(out_dir, cfg, resume, force)
    if cfg.data == "demonstrations" and len(cfg.tasks) != 1:
        raise UserError("demonstrations mode trains on one task's k-shot prompt; give one task")
    _check_model_modules(cfg)
    ensure_writable_dir(out_dir)
    started = time.time()
    device = resolve_device(cfg.device)
    if cfg.precision != "fp32" and device.type == "cpu" and cfg.precision == "fp16":
        raise UserError("fp16 training needs a GPU; use --precision fp32 or bf16 on CPU")

    if rank == 0:
        write_json_atomic(out_dir / TRAIN_CONFIG_NAME, saved_settings(cfg))
        # until the new manifest is written, the directory is an unfinished run, not a model
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)

    loaded = load_model(cfg.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    model.train()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    data = training_data(cfg)
    dataset = TokenizedTexts(data.texts, tok, cfg.loss_on, cfg.max_length)

    method = cfg.strategy
    model = method.select(model, cfg, cfg.seed)
    trainable, total = trainable_count(model)
    if trainable == 0:
        raise UserError("no parameter is trainable with these settings")

    ckpts = out_dir / CHECKPOINTS_DIR
    args = _training_arguments(cfg, ckpts, device, decay=not method.decay_off(model))
    world = max(1, args.world_size)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    nan = NanGuard()
    curves = CurveCallback(
        out_dir / "curves.csv", tok, cfg.curve_spec(), data.curve, per_step, cfg.eval_every, nan
    )
    loggers = []
    if "tensorboard" in cfg.report_to and rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        loggers.append(TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "tensorboard"))))
    trainer_cls = _make_trainer_class()
    trainer_cls.method = method
    trainer_cls.base_spec = cfg.model if method.saves_adapter else None
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, padding=True),
        callbacks=[
            ScheduleCheck(),
            StopWhenTrained(),
            SaveAtSteps(cfg.eval_checkpoints),
            nan,  # after SaveAtSteps, before the rest: it vetoes logging and saving a bad step
            curves,
            StepProgress(show_progress),
            *loggers,
            *(extra_callbacks or []),
            FaultPoints(),
        ],
    )
    for cb in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    if cfg.report_to:
        curves.log = trainer.log  # curve points go to the training logs too

    ckpt = _last_checkpoint(ckpts, drop_incomplete=rank == 0) if resume else None
    t0 = time.time()
    try:
        metrics = trainer.train(resume_from_checkpoint=ckpt).metrics
    except AlreadyTrained:  # killed after its last checkpoint: nothing left to train
        metrics = {}
        curves.on_train_end(args, trainer.state, trainer.control, model=trainer.model)
    train_seconds = time.time() - t0
    common = dict(
        command="finetune",
        started=started,
        model=loaded.describe(),
        method=cfg.method,
        parameters=method.parameters,
        device=str(args.device),
        world_size=world,
        seeds=[cfg.seed],
        learning_rates=learning_rates(trainer.state.log_history),
    )
    if nan.tripped:
        _diverged(out_dir, cfg, nan, common, write=trainer.is_world_process_zero())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    final_loss = losses[-1] if losses else None
    if trainer.is_world_process_zero():
        _save_final(trainer.model, tok, out_dir, cfg)
        kill_point("train-save")
        write_manifest(
            out_dir,
            **common,
            status=COMPLETE,
            trainable_parameters=trainable,
            total_parameters=total,
            steps=trainer.state.global_step,
            examples_per_step=per_step,
            final_loss=final_loss,
            train_tokens=dataset.n_tokens(),
            items={
                ITEM_LAYOUT_KEY: ITEM_LAYOUT,
                "curve_first_index": CURVE_BASE,
                "train_first_index": TRAIN_BASE,
                "scored_questions": {"test_n": cfg.test_n, "heldout_n": cfg.heldout_n},
                "train_skipped": data.skipped,
            },
            timings={"train_seconds": round(train_seconds, 3)},
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        )
    return FinetuneResult(
        out_dir, trainer.state.global_step, final_loss, train_seconds, trainable, total, per_step
    )


def _training_arguments(cfg: FinetuneConfig, ckpts: Path, device, decay: bool):
    """The Trainer's arguments: the training recipe (the paper's, or the demonstrations
    mode's), the seeds, logging every step, checkpoints and precision."""
    from transformers import TrainingArguments

    if cfg.data == "demonstrations":
        recipe = DEMONSTRATIONS_RECIPE
    else:
        recipe = {
            "num_train_epochs": cfg.epochs or 1.0,
            "per_device_train_batch_size": per_process_batch(cfg.batch_size, launched_processes()),
            "gradient_accumulation_steps": cfg.grad_accum,
            "lr_scheduler_type": cfg.schedule,
            "warmup_steps": cfg.warmup_steps,
            "max_grad_norm": 1.0,
            "optim": "sgd" if cfg.optimizer == "sgd" else "adamw_torch",
            "train_sampling_strategy": "random",
        }
    return TrainingArguments(
        output_dir=str(ckpts),
        max_steps=cfg.total_steps or -1,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay if decay else 0.0,
        **recipe,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        logging_nan_inf_filter=False,  # the NaN guard must see the real loss
        save_strategy="steps" if cfg.save_every else "no",
        save_steps=cfg.save_every or 500,
        # tensorboard gets its own callback (so its logs live in OUT/tensorboard)
        report_to=[r for r in cfg.report_to if r != "tensorboard"] or "none",
        use_cpu=device.type == "cpu",
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _diverged(out_dir: Path, cfg: FinetuneConfig, nan, common: dict, write: bool):
    """A run the NaN guard stopped: its manifest says why and where (``write``: this process
    writes it), and no model is saved."""
    last = _last_checkpoint(out_dir / CHECKPOINTS_DIR)
    if write:
        write_manifest(
            out_dir,
            **common,
            status=DIVERGED,
            diverged={
                "step": nan.bad_step,
                "reason": nan.reason,
                "nonfinite_parameters": nan.bad_parameters[:20],
                "lr": cfg.lr,
            },
            last_good_checkpoint=last,
        )
    keep = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
    raise TrainingDiverged(
        f"training diverged at step {nan.bad_step} ({nan.reason}); no model was saved; "
        f"{keep}; the reason is in {out_dir / MANIFEST_NAME} (lower the learning rate)"
    )


def _save_final(model, tok, out_dir: Path, cfg: FinetuneConfig) -> None:
    """Save the final model (or LoRA adapter) and tokenizer into a staging directory, then move
    each file into ``out_dir``: a killed or failed save leaves no half-written weights there."""
    from iclft.finetune.callbacks import nonfinite_parameters

    bad = nonfinite_parameters(model)
    if bad:  # the guard stops before this; kept so no path can save such weights
        raise TrainingDiverged(f"refusing to save non-finite parameters ({', '.join(bad[:3])})")
    staging = out_dir / ".final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        cfg.strategy.save(model, staging, cfg.model)
        tok.save_pretrained(str(staging))
        for f in sorted(staging.iterdir()):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(f, out_dir / f.name)
    except OSError as e:
        raise WriteError(
            f"cannot save the final model in {out_dir}: {e.strerror or e}; checkpoints are kept"
        ) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
