"""The on-disk layout of a fine-tuning directory and of a run's fine-tuned models, on the
bottom floor so that every level (the model loader, the runner, the trainer, the report) reads
it from one place without importing the packages above.

A run keeps each fine-tuned model in ``RUN_DIR/finetune/<model slug>/<method>`` (the first
seed) or ``<method>@seed<N>`` (another seed), the slug being the model spec with ``/`` as
``__`` (:func:`model_slug`, :func:`ft_dir`).

A fine-tuning directory holds ``train_config.json`` (its settings), ``manifest.json`` (its
``status`` ends as :data:`COMPLETE` or :data:`DIVERGED`), the final model, and its checkpoints
``checkpoints/checkpoint-<step>`` (the Trainer's naming), each complete once the Trainer has
written its ``trainer_state.json`` (the last file of a save).
"""

from __future__ import annotations

import json
from pathlib import Path

#: a fine-tuning directory: its settings file, and the ``status`` its manifest.json ends with
TRAIN_CONFIG_NAME = "train_config.json"
COMPLETE, DIVERGED = "complete", "diverged"
#: its checkpoints' folder, and the file whose presence says a checkpoint's save finished
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_DONE = "trainer_state.json"


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` of the run in ``out_dir`` is saved."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"checkpoint-{step}"


def checkpoint_complete(ckpt: Path) -> bool:
    """Whether a checkpoint's save finished (a readable trainer_state.json)."""
    try:
        json.loads((Path(ckpt) / CHECKPOINT_DONE).read_text())
    except (OSError, ValueError):
        return False
    return True


def model_slug(spec: str) -> str:
    """The directory name of a model in a run: its spec, outer ``/`` stripped, ``/`` as ``__``."""
    return spec.strip("/").replace("/", "__")


def ft_dir(run_dir: Path, model: str, method: str, seed: int, first_seed: int) -> Path:
    """Where a run keeps ``model`` fine-tuned by ``method`` (an arm, ``ft-lora``) with ``seed``."""
    name = method if seed == first_seed else f"{method}@seed{seed}"
    return Path(run_dir) / "finetune" / model_slug(model) / name
