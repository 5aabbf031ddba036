"""The validated fine-tuning configuration (one pydantic model; CLI flags and YAML both fill it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iclft.config import check_eval_checkpoints, float32_range
from iclft.errors import UnknownNameError, UserError

METHODS = ("full", "lora", "kv", "layer-causal")
PARAM_SETS = ("full", "kv", "lora")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
LOSS_ON = ("target", "full")
DATA_MODES = ("tasks", "demonstrations")

#: a fine-tuning directory: its settings file, and the ``status`` its manifest.json ends with
TRAIN_CONFIG_NAME = "train_config.json"
COMPLETE, DIVERGED = "complete", "diverged"
#: its checkpoints: ``checkpoints/checkpoint-<step>`` (the Trainer's naming), each complete once
#: the Trainer has written its trainer_state.json (the last file of a save)
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


def fixed_steps(steps: int | None, epochs: float | None, data: str | None) -> int | None:
    """The run's number of optimizer steps when the settings fix it (``steps`` in tasks mode);
    ``None`` when the data decides it (``epochs``, or demonstrations mode: one epoch)."""
    return steps if steps and not epochs and data == "tasks" else None


#: fields whose value is one of a fixed set of names: (what to call it in errors, allowed)
_NAMED = {
    "method": ("method", METHODS),
    "params": ("parameter set", PARAM_SETS),
    "optimizer": ("optimizer", OPTIMIZERS),
    "schedule": ("schedule", SCHEDULES),
    "precision": ("precision", PRECISIONS),
}


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: attention and MLP projections

    _float32 = field_validator("*")(float32_range)


class FinetuneConfig(BaseModel):
    """Everything that determines a fine-tuning run (saved as ``train_config.json``).

    Every float must be finite (``inf``/``nan`` are refused wherever they come from)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = "smollm2-135m"
    method: str = "full"
    #: parameters updated by ``layer-causal`` (the others select their own)
    params: str = "kv"
    tasks: list[str] = ["expression"]
    data: Literal["tasks", "demonstrations"] = "tasks"
    train_n: int = Field(1000, gt=0, description="training texts per task")
    train_variant: Literal["clean", "misleading"] = "clean"
    shots: int = Field(32, gt=0, description="demonstrations mode: k of the k-shot prompt")
    loss_on: Literal["target", "full"] = "target"
    steps: int | None = Field(300, gt=0)
    epochs: float | None = Field(None, gt=0)
    lr: float = 1e-5
    schedule: str = "constant_with_warmup"
    warmup_steps: int = Field(20, ge=0)
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: str = "adamw"
    precision: str = "fp32"
    seed: int = 0
    eval_every: int = Field(0, ge=0, description="0: only before and after training")
    eval_n: int = Field(50, gt=0)
    eval_tasks: list[str] | None = None  # default: the training tasks
    save_every: int = Field(0, ge=0, description="0: no intermediate checkpoints")
    eval_checkpoints: list[int] = Field(
        default_factory=list,
        description="steps whose checkpoints are always saved, to be evaluated 0-shot beside "
        "the final model (`iclft run` does; sorted, each listed once; empty: final model only)",
    )
    max_length: int = Field(1024, gt=8)
    lora: LoraSettings = LoraSettings()
    device: str = "auto"

    _float32 = field_validator("*")(float32_range)

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"learning rate must be > 0, got {v}")
        return v

    @field_validator("method", "params", "optimizer", "schedule", "precision")
    @classmethod
    def _known_name(cls, v: str, info) -> str:
        kind, allowed = _NAMED[info.field_name]
        if v not in allowed:
            raise UnknownNameError(kind, v, allowed)
        return v

    @field_validator("eval_checkpoints")
    @classmethod
    def _eval_checkpoints(cls, v: list[int], info) -> list[int]:
        d = info.data  # the fields above, where valid
        total = fixed_steps(d.get("steps"), d.get("epochs"), d.get("data"))
        return check_eval_checkpoints(v, total)

    @field_validator("tasks", "eval_tasks")
    @classmethod
    def _tasks(cls, v: list[str] | None) -> list[str] | None:
        from iclft.tasks import get_task

        if v is None:
            return v
        if not v:
            raise ValueError("at least one task is needed")
        for t in v:
            get_task(t)
        return v

    @property
    def selection(self) -> str:
        """Which parameters are updated: full, kv or lora."""
        return self.params if self.method == "layer-causal" else self.method

    @property
    def layer_causal(self) -> bool:
        return self.method == "layer-causal"

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps, when the settings fix them (see :func:`fixed_steps`)."""
        return fixed_steps(self.steps, self.epochs, self.data)


def make_config(**values) -> FinetuneConfig:
    """Build and validate, turning pydantic's errors into one user-facing line."""
    try:
        return FinetuneConfig(**values)
    except ValidationError as e:
        probs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "finite_number":
                msg = f"must be a finite number, got {err['input']}"
            ctx = err.get("ctx", {}).get("error")
            if isinstance(ctx, UserError):
                msg = str(ctx)
            probs.append(f"{loc}: {msg}")
        raise UserError("invalid fine-tuning settings: " + "; ".join(probs)) from None


def load_config_file(path: Path) -> dict:
    """Read a YAML file of fine-tuning settings (keys as in :class:`FinetuneConfig`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    return data
