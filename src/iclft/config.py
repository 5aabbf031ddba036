"""The experiment configuration: one YAML file validated by one pydantic model.

Validation reports every problem at once, each with its location and, for unknown names, the
nearest allowed one::

    configs/x.yaml: methods[2]: unknown method 'ft-ful' (did you mean 'ft-full'?); shots[0]: ...
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator

from iclft.analysis.pipeline import N_SPLITS, PER_POSITION_KINDS
from iclft.analysis.similarity_table import KEY_SETS
from iclft.errors import UserError, did_you_mean
from iclft.finetune.config import EXPERIMENT_DEFAULTS, TrainingSettings
from iclft.icl.prompts import CHAT_MODES, DEMO_MODES, MAX_DEMO_SETS
from iclft.icl.scoring import PROTOCOLS
from iclft.records import SCORINGS, arms, ft_method, is_finetune
from iclft.stats import N_PERMUTATIONS
from iclft.validation import FLOAT32_MAX, Strict, load_yaml_file


def _known(kind: str, allowed_fn):
    def check(v: str) -> str:
        allowed = list(allowed_fn())
        if v not in allowed:
            raise ValueError(f"unknown {kind} {v!r}{did_you_mean(v, allowed)}")
        return v

    return AfterValidator(check)


def _variants():
    from iclft.tasks import VARIANTS

    return VARIANTS


def _task_names():
    from iclft.tasks import task_names

    return task_names()


MethodName = Annotated[str, _known("method", arms)]
TaskName = Annotated[str, _known("task", _task_names)]
VariantName = Annotated[str, _known("variant", _variants)]
ChatMode = Annotated[str, _known("chat template mode", lambda: CHAT_MODES)]


class CircuitsSettings(Strict):
    enabled: bool = False
    tasks: list[TaskName] | None = None  # default: every task of the run that has pairs
    shots: int = Field(4, ge=0)
    n: int = Field(4, gt=0, description="patching pairs per task")
    method: Literal["exact", "attribution"] = "attribution"
    top_k: int = Field(20, gt=0)
    verify: int | None = Field(
        None, ge=0, description="attribution's top heads/MLPs re-measured exactly (None: 2 x top_k)"
    )
    n_splits: int = Field(N_SPLITS, ge=0, description="split-halves for each shift's noise floor")
    n_perm: int = Field(
        N_PERMUTATIONS, ge=0, description="permutations of each shift's test of 'no shift'"
    )
    per_position: list[Literal[PER_POSITION_KINDS]] = Field(
        default_factory=list, description="kinds also patched one position at a time (exact)"
    )


class SimilaritySettings(Strict):
    enabled: bool = False
    tasks: list[TaskName] | None = None
    shots: int = Field(8, gt=0)
    n: int = Field(8, gt=0)
    lr: float | list[float] = Field(
        1e-3, description="one learning rate, or a grid chosen from by held-out accuracy"
    )
    heldout: int = Field(16, gt=0, description="held-out queries that choose from an lr grid")
    keys: Literal[KEY_SETS] = "reference"  # type: ignore[valid-type]
    random_draws: int = Field(5, gt=0, description="draws of each norm-matched random update")
    untrained: bool = Field(True, description="also measure a randomly initialised model")
    n_boot: int = Field(1000, ge=0, description="bootstrap resamples of the 95% intervals")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_grid(cls, v: Any) -> Any:
        if v == []:
            raise ValueError("must be a positive finite number or a list of them, got []")
        for x in v if isinstance(v, list) else [v]:
            ok = isinstance(x, (int, float)) and not isinstance(x, bool)
            if not ok or not math.isfinite(x) or x <= 0 or abs(x) > FLOAT32_MAX:
                raise ValueError(f"must be a positive finite number or a list of them, got {v}")
        return v


class AnalysisSettings(Strict):
    circuits: CircuitsSettings = CircuitsSettings()
    similarity: SimilaritySettings = SimilaritySettings()


class ExperimentConfig(Strict):
    """Everything a run needs; saved resolved as ``RUN_DIR/config.json``."""

    name: str = "experiment"
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m"], min_length=1)
    tasks: list[TaskName] = Field(min_length=1)
    variants: list[VariantName] = Field(default_factory=lambda: ["clean", "misleading"])
    methods: list[MethodName] = Field(default_factory=lambda: ["baseline", "icl"], min_length=1)
    shots: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0, 1, 2, 4, 8])
    n: int = Field(50, gt=0, description="test items per cell")
    demos: Literal[DEMO_MODES] = "shared"  # type: ignore[valid-type]
    scoring: Literal[SCORINGS] = "generate"  # type: ignore[valid-type]
    #: exact (ours) or paper (per-task token budget, substring): see iclft.icl.scoring
    protocol: Literal[tuple(PROTOCOLS)] = "exact"  # type: ignore[valid-type]
    #: independent demonstration sets per k-shot cell (intervals include their variance)
    demo_sets: int = Field(1, ge=1, le=MAX_DEMO_SETS)
    #: held-out clean items per k-shot cell, on which the report chooses the best k (0: none)
    heldout_n: int = Field(0, ge=0)
    #: the k the headline also shows, fixed before any result (default: the largest k)
    fixed_shots: int | None = Field(None, ge=1)
    #: prompts in the tokenizer's chat template (instruction-tuned models): none, turns, single
    chat_template: ChatMode = "none"
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    #: evaluation rows per forward, or "auto" (the largest that fits: halved on out-of-memory)
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = 16
    max_new_tokens: int = Field(10, gt=0)
    device: str = "auto"
    dtype: str = "auto"
    #: settings shared by every ``ft-*`` method (see ``iclft finetune --help``), from
    #: :data:`~iclft.finetune.config.EXPERIMENT_DEFAULTS`
    finetune: TrainingSettings = Field(
        default_factory=lambda: TrainingSettings(**EXPERIMENT_DEFAULTS)
    )
    #: per-method overrides of ``finetune`` (e.g. ``ft-full: {lr: 1.0e-5}``)
    finetune_overrides: dict[MethodName, dict[str, Any]] = Field(default_factory=dict)
    analysis: AnalysisSettings = AnalysisSettings()

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        from iclft.icl.evaluate import parse_batch_size

        try:
            return parse_batch_size(v)
        except UserError as e:
            raise ValueError(str(e)) from None

    @field_validator("finetune", mode="before")
    @classmethod
    def _experiment_defaults(cls, v: Any) -> Any:
        return {**EXPERIMENT_DEFAULTS, **v} if isinstance(v, dict) else v

    def ft_methods(self) -> list[str]:
        return [m for m in self.methods if is_finetune(m)]

    def finetune_for(self, method: str) -> TrainingSettings:
        merged = {**self.finetune.model_dump(), **self.finetune_overrides.get(method, {})}
        return TrainingSettings(**merged)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[check(), str]",):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "config"


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown setting"
    if err["type"] == "missing":
        return "required setting is missing"
    if err["type"] == "finite_number":
        return f"must be a finite number, got {err['input']}"
    return msg


def _unread_settings(cfg: ExperimentConfig) -> list[str]:
    """Method-specific fine-tuning settings (params, lora) that no method given reads: the
    shared block's, when no ft-* method of the run reads them; an override's, when its method
    does not."""
    from iclft.finetune.config import unread_settings

    out = []
    shared = cfg.finetune.model_dump()
    methods = [ft_method(m) for m in cfg.ft_methods()]
    per = [set(unread_settings(m, shared)) for m in methods]
    for name in sorted(set.intersection(*per) if per else set()):
        out.append(
            f"finetune.{name}: read by none of this run's methods ({', '.join(cfg.ft_methods())})"
        )
    for m, values in cfg.finetune_overrides.items():
        if is_finetune(m):
            for name in unread_settings(ft_method(m), values):
                out.append(f"finetune_overrides.{m}.{name}: {m} does not read it")
    return out


_FIXED_STEPS = "a run fine-tunes for a number of steps (epochs are for `iclft finetune`)"


def validate_config(data: Any, source: str = "config") -> ExperimentConfig:
    """Validate a mapping; every problem is reported in one line, each with its location."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of settings at the top level")
    known = set(ExperimentConfig.model_fields)
    try:
        cfg = ExperimentConfig(**data)
    except ValidationError as e:
        probs = []
        for err in e.errors():
            loc = _loc(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
            msg = _message(err)
            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
                msg += did_you_mean(str(err["loc"][0]), known)
            probs.append(f"{loc}: {msg}")
        raise UserError(f"{source}: " + "; ".join(probs)) from None
    problems = []
    for m in cfg.finetune_overrides:
        try:
            s = cfg.finetune_for(m)
        except ValidationError as e:
            for err in e.errors():
                where = f".{_loc(err['loc'])}" if err["loc"] else ""
                problems.append(f"finetune_overrides.{m}{where}: {_message(err)}")
            s = None
        if not is_finetune(m):
            problems.append(f"finetune_overrides.{m}: only ft-* methods take settings")
        elif s is not None and (s.steps is None or s.epochs is not None):
            problems.append(f"finetune_overrides.{m}.steps: {_FIXED_STEPS}")
    if cfg.finetune.steps is None or cfg.finetune.epochs is not None:
        problems.append(f"finetune.steps: {_FIXED_STEPS}")
    problems += _unread_settings(cfg)
    if cfg.scoring == "loglik":
        from iclft.tasks import get_task

        free = [t for t in cfg.tasks if not get_task(t).is_choice]
        if free:
            problems.append(
                f"scoring: loglik needs choice tasks, but {', '.join(free)} "
                "has free answers (use auto or generate)"
            )
    if cfg.fixed_shots is not None and cfg.fixed_shots not in cfg.shots:
        problems.append(f"fixed_shots: {cfg.fixed_shots} is not one of shots {cfg.shots}")
    if cfg.protocol == "paper" and cfg.scoring == "loglik":
        problems.append(
            "protocol: paper generates text for every task; use scoring generate or auto"
        )
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    return cfg


def load_experiment(path: Path) -> ExperimentConfig:
    data = load_yaml_file(path)
    return validate_config(data or {}, str(path))


def packaged_config(name: str) -> Path:
    """A config shipped with iclft (``demo``, ``paper``, ``icl-vs-gd``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.exists():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"no shipped config {name!r}; shipped: {', '.join(shipped)}")
    return path
