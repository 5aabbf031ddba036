"""The experiment configuration: one YAML file validated by one pydantic model.

Validation reports every problem at once, each with its location and, for unknown names, the
nearest allowed one::

    configs/x.yaml: methods[2]: unknown method 'ft-ful' (did you mean 'ft-full'?); shots[0]: ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from iclft.analysis.settings import CircuitSettings, SimilaritySettings
from iclft.errors import UserError, did_you_mean
from iclft.finetune.config import EXPERIMENT_DEFAULTS, TrainingSettings
from iclft.icl.settings import (
    BATCH_SIZE,
    EvalSettings,
    TaskName,
    VariantName,
    loglik_problem,
    parse_batch_size,
)
from iclft.records import arms, ft_method, is_finetune
from iclft.validation import Strict, error_location, error_message, known, load_yaml_file

MethodName = Annotated[str, known("method", arms)]


class CircuitsSection(CircuitSettings):
    """``analysis.circuits``: the circuits analysis's settings, on ``tasks`` of the run."""

    enabled: bool = False
    tasks: list[TaskName] | None = None  # default: every task of the run that has pairs


class SimilaritySection(SimilaritySettings):
    """``analysis.similarity``: the ICL-vs-GD analysis's settings, on ``tasks`` of the run."""

    enabled: bool = False
    tasks: list[TaskName] | None = None  # default: every task of the run


class AnalysisSettings(Strict):
    circuits: CircuitsSection = CircuitsSection()
    similarity: SimilaritySection = SimilaritySection()


class ExperimentConfig(EvalSettings):
    """Everything a run needs; saved resolved as ``RUN_DIR/config.json``. Its evaluation
    settings (``n``, ``demos``, ``scoring``, ``protocol``, ``demo_sets``, ``heldout_n``,
    ``chat_template``, ``max_new_tokens``) are :class:`~iclft.icl.settings.EvalSettings`'s
    fields, the options of ``iclft eval``, with the same defaults and bounds."""

    model_config = ConfigDict(frozen=False)

    name: str = "experiment"
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m"], min_length=1)
    tasks: list[TaskName] = Field(min_length=1)
    variants: list[VariantName] = Field(default_factory=lambda: ["clean", "misleading"])
    methods: list[MethodName] = Field(default_factory=lambda: ["baseline", "icl"], min_length=1)
    shots: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0, 1, 2, 4, 8])
    #: the k the headline also shows, fixed before any result (default: the largest k)
    fixed_shots: int | None = Field(None, ge=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    #: evaluation rows per forward, or "auto" (the largest that fits: halved on out-of-memory)
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = BATCH_SIZE
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
    settings = set(ExperimentConfig.model_fields)
    try:
        cfg = ExperimentConfig(**data)
    except ValidationError as e:
        probs = []
        for err in e.errors():
            loc = error_location(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
            if not err["loc"]:  # a check across settings names them itself
                probs.append(error_message(err))
                continue
            msg = error_message(err)
            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
                msg += did_you_mean(str(err["loc"][0]), settings)
            probs.append(f"{loc}: {msg}")
        raise UserError(f"{source}: " + "; ".join(probs)) from None
    problems = []
    for m in cfg.finetune_overrides:
        try:
            s = cfg.finetune_for(m)
        except ValidationError as e:
            for err in e.errors():
                where = f".{error_location(err['loc'])}" if err["loc"] else ""
                problems.append(f"finetune_overrides.{m}{where}: {error_message(err)}")
            s = None
        if not is_finetune(m):
            problems.append(f"finetune_overrides.{m}: only ft-* methods take settings")
        elif s is not None and (s.steps is None or s.epochs is not None):
            problems.append(f"finetune_overrides.{m}.steps: {_FIXED_STEPS}")
    if cfg.finetune.steps is None or cfg.finetune.epochs is not None:
        problems.append(f"finetune.steps: {_FIXED_STEPS}")
    problems += _unread_settings(cfg)
    loglik = loglik_problem(cfg.scoring, cfg.tasks)
    if loglik:
        problems.append(f"scoring: {loglik}")
    if cfg.fixed_shots is not None and cfg.fixed_shots not in cfg.shots:
        problems.append(f"fixed_shots: {cfg.fixed_shots} is not one of shots {cfg.shots}")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    return cfg


def load_experiment(path: Path) -> ExperimentConfig:
    data = load_yaml_file(path)
    return validate_config(data or {}, str(path))


def packaged_config(name: str) -> Path:
    """A config shipped with iclft (``demo``, ``paper``, ``icl-vs-gd``)."""
    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    if not path.exists():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"no shipped config {name!r}; shipped: {', '.join(shipped)}")
    return path
