"""The fine-tuning settings: one pydantic model of the training hyper-parameters
(:class:`TrainingSettings`, each field with its help text) that the experiment's ``finetune:``
block, ``iclft finetune``'s options (derived from the fields) and a run's validated config
(:class:`FinetuneConfig`, saved as ``train_config.json``) all use. The layout of a
fine-tuning directory is :mod:`iclft.layout`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AliasChoices,
    AliasPath,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from iclft.errors import UnknownNameError, UserError
from iclft.finetune.methods import (
    METHOD_NAMES,
    PARAM_SET_NAMES,
    LayerCausal,
    Lora,
    Method,
    get_method,
)
from iclft.icl.prompts import CHAT_MODES
from iclft.icl.scoring import PROTOCOLS
from iclft.icl.settings import EvalSettings, eval_field
from iclft.records import SCORINGS
from iclft.validation import Strict, known, load_yaml_file


def fixed_steps(steps: int | None, epochs: float | None, data: str | None) -> int | None:
    """The run's number of optimizer steps when the settings fix it (``steps`` in tasks mode);
    ``None`` when the data decides it (``epochs``, or demonstrations mode: one epoch)."""
    return steps if steps and not epochs and data == "tasks" else None


def check_eval_checkpoints(steps: list[int], total: int | None) -> list[int]:
    """The fine-tuning steps whose checkpoints are saved and evaluated, sorted: each a step of
    the run (1 to ``total``, when the run's length is known) listed once. Empty: only the
    final model is evaluated."""
    allowed = f"steps from 1 to {total}" if total is not None else "positive steps"
    for s in steps:
        if s < 1 or (total is not None and s > total):
            where = "not positive" if s < 1 else f"beyond the run's {total} steps"
            raise ValueError(f"step {s} is {where}; allowed: {allowed}, each listed once")
    twice = sorted({s for s in steps if steps.count(s) > 1})
    if twice:
        raise ValueError(f"step {twice[0]} is listed twice; allowed: {allowed}, each listed once")
    return sorted(steps)


#: schedules that ramp the learning rate up from 0 over ``warmup_steps`` (``constant`` has none)
WARMUP_SCHEDULES = ("constant_with_warmup", "linear", "cosine")


def check_warmup(schedule: str, warmup_steps: int, total: int) -> None:
    """Refuse a warm-up as long as the run or longer: the learning rate ramps up from 0 and
    never reaches ``lr`` (``--steps 1`` with 20 warm-up steps trains at learning rate 0)."""
    if schedule in WARMUP_SCHEDULES and warmup_steps >= total:
        steps = f"{total} step" + ("s" if total != 1 else "")
        raise ValueError(
            f"warmup_steps {warmup_steps} is not below the run's {steps}: the {schedule} "
            "schedule ramps the learning rate up from 0 and would never reach lr; allowed: "
            + (f"warm-up steps from 0 to {total - 1}" if total > 1 else "0 warm-up steps")
            + " (e.g. --warmup-steps 0)"
        )


def schedule_rates(schedule: str, lr: float, warmup_steps: int, total: int) -> list[float]:
    """The learning rate of each of ``total`` optimizer steps under transformers' schedule
    (the Trainer's own: ``get_scheduler``), as the Trainer applies it."""
    import torch
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = get_scheduler(schedule, opt, num_warmup_steps=warmup_steps, num_training_steps=total)
    return [lr * sched.lr_lambdas[0](step) for step in range(total)]


def check_schedule(schedule: str, lr: float, warmup_steps: int, total: int) -> None:
    """Refuse a schedule that cannot train: see :func:`check_warmup`, and one whose learning
    rate is 0 at every step of the run."""
    check_warmup(schedule, warmup_steps, total)
    if not any(r > 0 for r in schedule_rates(schedule, lr, warmup_steps, total)):
        raise ValueError(
            f"the {schedule} schedule with lr {lr:g} and {warmup_steps} warm-up steps is 0 at "
            f"every one of the run's {total} steps: nothing would be trained"
        )


#: the LoRA fields, by their key in the nested ``lora:`` mapping of a run's file
LORA_KEYS = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
             "lora_targets": "target_modules"}  # fmt: skip


def _lora(field: str) -> AliasChoices:
    """A LoRA field is read from ``lora: {key: ...}`` (a run's file) or from its own name."""
    return AliasChoices(AliasPath("lora", LORA_KEYS[field]), field)


#: fields whose value is one of their ``Literal``'s names (refused with the nearest allowed one)
_NAMED = ("train_variant", "loss_on", "schedule", "optimizer", "precision")


#: where fine-tuning can send its training logs (the Trainer's ``report_to`` integrations)
LOGGERS = ("tensorboard", "wandb")


class TrainingSettings(Strict):
    """The hyper-parameters of a fine-tuning run: the ``finetune:`` block of an experiment (with
    :data:`EXPERIMENT_DEFAULTS`), and the options of ``iclft finetune`` (these defaults).

    Every float must be finite (``inf``/``nan`` are refused wherever they come from)."""

    train_n: int = Field(1000, gt=0, description="Training texts per task.")
    train_variant: Literal["clean", "misleading"] = Field(
        "clean", description="Variant of the training texts."
    )
    loss_on: Literal["target", "full"] = Field(
        "target", description="Tokens the loss is on: the answer (target) or the whole text."
    )
    steps: int | None = Field(300, gt=0, description="Optimizer steps.")
    epochs: float | None = Field(None, gt=0, description="Epochs (instead of --steps).")
    lr: float = Field(1e-5, description="Learning rate.")
    schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant_with_warmup", description="Learning-rate schedule."
    )
    warmup_steps: int = Field(20, ge=0, description="Warm-up steps of the schedule.")
    batch_size: int = Field(
        16,
        gt=0,
        description="Batch size: the global batch (with N processes under accelerate launch, "
        "each takes batch_size / N rows).",
    )
    grad_accum: int = Field(1, gt=0, description="Gradient accumulation steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW/SGD weight decay.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision.")
    eval_every: int = Field(
        0, ge=0, description="Steps between curve points (0: only before and after training)."
    )
    eval_n: int = Field(50, gt=0, description="Held-out items per task and variant.")
    save_every: int = Field(
        0, ge=0, description="Steps between checkpoints (0: no intermediate checkpoints)."
    )
    eval_checkpoints: list[int] = Field(
        default_factory=list,
        description="Steps whose checkpoints are always saved, to be evaluated 0-shot beside "
        "the final model (`iclft run` does; sorted, each listed once; empty: final model only; "
        "the paper evaluates step 100 of 300).",
    )
    max_length: int = Field(1024, gt=8, description="Longest training text, in tokens.")
    report_to: list[str] = Field(
        default_factory=list,
        description="Training logs (off when empty): tensorboard (under OUT/tensorboard) and/or "
        "wandb, with the loss, learning rate and the curve points of curves.csv.",
    )
    params: Annotated[str, known("parameter set", PARAM_SET_NAMES)] = Field(
        "kv", description=f"layer-causal: the parameters it trains ({', '.join(PARAM_SET_NAMES)})."
    )
    lora_rank: int = Field(8, gt=0, validation_alias=_lora("lora_rank"), description="LoRA rank.")
    lora_alpha: float = Field(
        16.0, gt=0, validation_alias=_lora("lora_alpha"), description="LoRA alpha."
    )
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, validation_alias=_lora("lora_dropout"), description="LoRA dropout."
    )
    lora_targets: list[str] | None = Field(
        None,
        validation_alias=_lora("lora_targets"),
        description="LoRA target modules (default: the family's attention and MLP projections).",
    )

    @model_validator(mode="before")
    @classmethod
    def _lora_keys(cls, data: Any) -> Any:
        lora = data.get("lora") if isinstance(data, dict) else None
        unknown = sorted(set(lora) - set(LORA_KEYS.values())) if isinstance(lora, dict) else []
        if unknown:
            allowed = ", ".join(LORA_KEYS.values())
            raise ValueError(f"lora.{unknown[0]}: unknown setting; allowed: {allowed}")
        return data

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"learning rate must be > 0, got {v}")
        return v

    @field_validator(*_NAMED, mode="before")
    @classmethod
    def _one_of(cls, v: Any, info) -> Any:
        allowed = get_args(cls.model_fields[info.field_name].annotation)
        if v not in allowed:
            raise UnknownNameError(info.field_name.replace("_", " "), v, allowed)
        return v

    @field_validator("report_to")
    @classmethod
    def _report_to(cls, v: list[str]) -> list[str]:
        import importlib.util

        needs = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
        for name in v:
            if name not in LOGGERS:
                raise UnknownNameError("training logger", name, LOGGERS)
            if not any(importlib.util.find_spec(m) for m in needs[name]):
                raise ValueError(
                    f"report_to {name} needs the {needs[name][0]} package "
                    f"(pip install {needs[name][0]})"
                )
        return list(dict.fromkeys(v))

    @field_validator("eval_checkpoints")
    @classmethod
    def _eval_checkpoints(cls, v: list[int], info) -> list[int]:
        d = info.data  # the fields above, where valid (a run's ``data`` comes first)
        total = fixed_steps(d.get("steps"), d.get("epochs"), d.get("data", "tasks"))
        return check_eval_checkpoints(v, total)

    @model_validator(mode="after")
    def _warmup(self):
        # where the run's length is fixed here; else the trainer checks it before step 1
        total = fixed_steps(self.steps, self.epochs, getattr(self, "data", "tasks"))
        if total is not None:
            check_warmup(self.schedule, self.warmup_steps, total)
        return self


#: the experiment's ``finetune:`` block starts from these instead of the defaults above: a short
#: CPU-sized run (``iclft finetune``'s defaults are the paper's protocol)
EXPERIMENT_DEFAULTS = {
    "train_n": 200,
    "steps": 30,
    "lr": 1e-4,
    "warmup_steps": 0,
    "batch_size": 8,
    "eval_n": 20,
}


class _Run(Strict):
    """What is trained on what (declared before the settings, whose checks read ``data``)."""

    model: str = Field("smollm2-135m", description="Alias, directory or hub id.")
    method: Annotated[str, known("method", METHOD_NAMES)] = Field(
        "full", description=f"Fine-tuning method: {', '.join(METHOD_NAMES)}."
    )
    tasks: list[str] = Field(["expression"], description="Training tasks.")
    data: Literal["tasks", "demonstrations"] = Field(
        "tasks", description="Train on task texts, or on one k-shot prompt's demonstrations."
    )
    shots: int = Field(32, gt=0, description="demonstrations mode: k of the k-shot prompt.")
    seed: int = Field(0, description="Seed of the data, the LoRA init and the Trainer.")


#: settings only some methods read (the others would ignore them)
METHOD_SPECIFIC = ("params", *LORA_KEYS)


def reads_setting(method: str, params: str, name: str) -> bool:
    """Whether ``method`` (layer-causal: on parameter set ``params``) reads setting ``name``:
    ``params`` only layer-causal; the LoRA settings only a LoRA adapter (lora, or layer-causal
    on lora)."""
    if name == "params":
        return method == LayerCausal.name
    if name in LORA_KEYS:
        return Lora.name in (method, params if method == LayerCausal.name else None)
    return True


def unread_settings(method: str, values: dict[str, Any]) -> list[str]:
    """The method-specific settings in ``values`` set away from their default that ``method``
    does not read (refused: a setting silently ignored would mislabel the run)."""
    fields = TrainingSettings.model_fields
    nested = values.get("lora") if isinstance(values.get("lora"), dict) else {}
    values = {**values, **{f: nested[k] for f, k in LORA_KEYS.items() if k in nested}}
    params = values.get("params", fields["params"].default)
    return [
        name
        for name in METHOD_SPECIFIC
        if name in values
        and values[name] != fields[name].get_default(call_default_factory=True)
        and not reads_setting(method, params, name)
    ]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: the evaluation settings the curve is scored with (declared below as EvalSettings' fields)
CURVE_SCORING = ("scoring", "protocol", "max_new_tokens", "chat_template")


class FinetuneConfig(TrainingSettings, _Run):
    """Everything that determines a fine-tuning run (saved as ``train_config.json``, with the
    LoRA settings nested as ``lora: {rank, alpha, dropout, target_modules}``)."""

    eval_tasks: list[str] | None = Field(None, description="Curve tasks (default: --tasks).")
    test_n: int = Field(
        1000,
        ge=0,
        description="Test items per task and variant (the -n you evaluate with, at most) whose "
        "questions no training text, demonstration or curve item repeats.",
    )
    heldout_n: int = Field(
        1000,
        ge=0,
        description="Held-out items per task (the --heldout-n you evaluate with, at most) kept "
        "apart likewise.",
    )
    # CURVE_SCORING: the curve is scored as an evaluation, by EvalSettings' fields
    scoring: str = eval_field(
        "scoring", f"How curve items are scored (as iclft eval's): {', '.join(SCORINGS)}."
    )
    protocol: str = eval_field(
        "protocol", f"Curve protocol (as iclft eval's): {', '.join(PROTOCOLS)}."
    )
    max_new_tokens: int = eval_field("max_new_tokens", "Curve generation budget, in tokens.")
    chat_template: str = eval_field(
        "chat_template", f"Curve prompts in the chat template (as iclft eval's): "
        f"{', '.join(CHAT_MODES)}.",
    )  # fmt: skip
    device: str = Field("auto", description="auto, cpu, cuda, mps.")

    @model_validator(mode="after")
    def _curve_spec(self) -> FinetuneConfig:
        self.curve_spec()  # e.g. loglik scoring of a free-answer task is refused here
        return self

    def curve_spec(self):
        """How the curve's items are evaluated: 0-shot, with the run's scoring settings."""
        from iclft.icl.settings import EvalSpec

        scored = {name: getattr(self, name) for name in CURVE_SCORING}
        tasks = tuple(self.eval_tasks or self.tasks)
        return EvalSpec(tasks=tasks, shots=(0,), n=self.eval_n, seed=self.seed, **scored)

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

    @model_validator(mode="after")
    def _only_read_settings(self):
        unread = unread_settings(self.method, {f: getattr(self, f) for f in METHOD_SPECIFIC})
        if unread:
            given = ", ".join(_flag(f) for f in unread)
            raise ValueError(
                f"{given} would be ignored by method {self.method}: --params is read only by "
                "layer-causal (the parameters it trains), the LoRA settings only by lora and "
                "layer-causal --params lora; drop them or choose such a method"
            )
        return self

    @model_serializer(mode="wrap")
    def _nest_lora(self, handler) -> dict:
        data = handler(self)
        lora = {key: data.pop(f) for f, key in LORA_KEYS.items() if f in data}
        return {**data, "lora": lora} if lora else data

    @property
    def strategy(self) -> Method:
        """The fine-tuning method's strategy (:mod:`iclft.finetune.methods`)."""
        return get_method(self.method, self.params)

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps, when the settings fix them (see :func:`fixed_steps`)."""
        return fixed_steps(self.steps, self.epochs, self.data)


#: the evaluation settings a fine-tuning run reads under the same name (the curve's scoring,
#: and the held-out items kept out of training): an experiment passes its own values on
EVAL_SETTINGS = tuple(f for f in FinetuneConfig.model_fields if f in EvalSettings.model_fields)


def per_process_batch(batch_size: int, processes: int) -> int:
    """The rows each of ``processes`` takes of the global ``batch_size`` (refused when they
    cannot share it equally: the batch, hence the trained model, would depend on N)."""
    if batch_size % processes:
        raise UserError(
            f"batch_size {batch_size} cannot be split across {processes} processes; use a "
            f"multiple of {processes} (each process takes batch_size / {processes} rows)"
        )
    return batch_size // processes


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
            probs.append(f"{loc}: {msg}" if err["loc"] else msg)
        raise UserError("invalid fine-tuning settings: " + "; ".join(probs)) from None


def load_config_file(path: Path) -> dict:
    """Read a YAML file of fine-tuning settings (keys as in :class:`FinetuneConfig`)."""
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    return data
