"""Every record that crosses a module or reaches disk, and the one list of experiment arms and
scoring names.

A record is a frozen dataclass; ``to_json()`` gives the dict written to disk (keys in field
order, so files stay readable by plain tools and identical from run to run) and
``from_json(d)`` parses one back. Fields that only some writers fill (what the runner adds to a
row, the choice scores of a loglik prediction) are left out of the JSON while unset; a
fine-tuned model's ``checkpoint`` is written whenever its ``step`` is, ``null`` for the final
model. The on-disk tables are in docs/records.md.

* :class:`Prediction`: one row of ``predictions.jsonl`` (one scored prompt)
* :class:`CellResult`: one row of ``results.jsonl`` (one evaluated cell)
* :class:`Comparison`: one row of ``comparisons.jsonl`` (a paired test of two settings)
* :class:`CurvePoint`: one row of a fine-tuning run's ``curves.csv``
* :class:`CircuitsResult`: ``circuits.json``; :class:`SimilarityResult`: ``similarity.json``
* :class:`StageRecord`: a runner stage's completion record, ``stages/<key>.json``
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from iclft.errors import UserError
from iclft.names import CIRCUIT_RENAMED
from iclft.stats import ALPHA  # the level comparisons decide at (re-exported)

#: experiment arms (the ``method`` of a row): the 0-shot base model, in-context learning, and
#: one ``ft-<method>`` arm per fine-tuning method
BASELINE, ICL = "baseline", "icl"
FT_PREFIX = "ft-"
#: the fine-tuning methods (their strategies: :mod:`iclft.finetune.methods`), in table order:
#: the three parameter selections, then layer-causal GD on one of them
FULL, KV, LORA, LAYER_CAUSAL = "full", "kv", "lora", "layer-causal"
FT_METHODS = (FULL, KV, LORA, LAYER_CAUSAL)
#: how an item is scored: free generation, loglikelihood of each choice, or by task kind
SCORINGS = ("generate", "loglik", "auto")


def ft_arm(method: str) -> str:
    """The arm of a fine-tuning method: ``full`` -> ``ft-full``."""
    return FT_PREFIX + method


def is_finetune(arm: str) -> bool:
    """Whether an arm is a fine-tuned model evaluated 0-shot (``ft-*``)."""
    return arm.startswith(FT_PREFIX)


def ft_method(arm: str) -> str:
    """The fine-tuning method of an ``ft-*`` arm: ``ft-full`` -> ``full``."""
    return arm[len(FT_PREFIX) :]


def arms() -> tuple[str, ...]:
    """Every arm, in the order tables show them."""
    return (BASELINE, ICL, *(ft_arm(m) for m in FT_METHODS))


def omit_unset() -> Any:
    """A field written to JSON only when it is not ``None``."""
    return field(default=None, metadata={"omit_unset": True})


def written_with(other: str) -> Any:
    """A field written to JSON (``null`` included) exactly when field ``other`` is."""
    return field(default=None, metadata={"written_with": other})


R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    """Base of the records: JSON out in field order, JSON in by field name."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.metadata.get("omit_unset") and v is None:
                continue
            other = f.metadata.get("written_with")
            if other is not None and getattr(self, other) is None:
                continue
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls: type[R], d: Mapping[str, Any], where: str = "") -> R:
        """The record of one JSON object; unknown keys are ignored (files of newer versions)."""
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise UserError(f"{where or cls.__name__}: not a {cls.__name__} row ({e})") from None

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes`` (records are frozen)."""
        return replace(self, **changes)


def opt_float(v: Any) -> float | None:
    """A finite float from a JSON or CSV value; ``None`` for missing, empty or non-finite."""
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def opt_int(v: Any) -> int | None:
    f = opt_float(v)
    return None if f is None else int(round(f))


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


@dataclass(frozen=True, kw_only=True)
class Prediction(Record):
    """One scored prompt: a row of ``predictions.jsonl``."""

    id: str
    model: str
    #: the arm; ``None`` only in rows written before rows carried it
    method: str | None = None
    task: str
    variant: str
    shots: int
    #: demonstrations actually in the prompt (fewer than ``shots`` when truncated to fit)
    shots_used: int | None = None
    demo_set: int = 0
    split: str = "test"
    chat_template: str | None = None
    demo_ids: list[str] = field(default_factory=list)
    scoring: str | None = None
    seed: int
    prompt: str = ""
    output: str = ""
    prediction: str | None = None
    target: str | None = None
    shortcut_target: str | None = None
    correct: bool
    substring_correct: bool | None = None
    shortcut_answer: bool | None = None
    #: loglik scoring: total log-probability of each choice
    scores: dict[str, float] | None = omit_unset()
    #: fine-tuned models (added by the runner): the step trained for, and the checkpoint's
    #: directory (``None``: the final model)
    step: int | None = omit_unset()
    checkpoint: str | None = written_with("step")


def shots_text(shots: int, used_mean: float | None, truncated: int | None) -> str:
    """``300``, or ``300 (247 used: context)`` when ``truncated`` prompts held fewer
    demonstrations than asked for (``used_mean``: the mean number they held)."""
    if not truncated or used_mean is None:
        return str(shots)
    return f"{shots} ({round(used_mean, 1):g} used: context)"


@dataclass(frozen=True, kw_only=True)
class CellResult(Record):
    """One evaluated cell (model, task, variant, arm, shots, split) for one seed: a row of
    ``results.jsonl``. ``from_json`` also reads rows of older runs, which lack most fields."""

    #: fields a row cannot do without
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "task", "variant", "method", "accuracy")
    #: the fields that name a cell, which each of its predictions carries too
    KEY: ClassVar[tuple[str, ...]] = ("model", "task", "variant", "method", "shots", "split")
    #: the evaluation settings a row copies as they are (its scoring and token budget are
    #: resolved per task)
    FROM_SPEC: ClassVar[tuple[str, ...]] = ("demos", "chat_template", "protocol", "seed")
    #: fields the runner adds to a row (the last ones), which rescoring keeps from the original
    ADDED_BY_RUNNER: ClassVar[tuple[str, ...]] = (
        "stage", "step", "train_examples", "ft_dir", "checkpoint",
    )  # fmt: skip

    model: str
    task: str
    variant: str
    method: str
    shots: int = 0
    #: ``test`` (reported) or ``heldout`` (clean items that choose the best k)
    split: str = "test"
    shots_used_mean: float | None = None
    #: prompts that held fewer demonstrations than ``shots`` (truncated to fit the context)
    truncated: int | None = None
    demos: str | None = None
    #: demonstration sets the cell was evaluated over, their accuracies and spread
    demo_sets: int = 1
    chat_template: str | None = None
    set_accuracies: list[float] | None = None
    set_sd: float | None = None
    scoring: str | None = None
    protocol: str | None = None
    #: generate scoring: the token budget of an answer (the paper protocol's is per task);
    #: absent in rows of loglik cells and of runs written before rows carried it
    max_new_tokens: int | None = omit_unset()
    seed: int = 0
    n: int | None = None
    #: prompts scored (items x demonstration sets); ``correct`` counts over all of them
    n_scored: int | None = None
    correct: int | None = None
    accuracy: float
    ci_low: float | None = None
    ci_high: float | None = None
    interval: str | None = None
    substring_accuracy: float | None = None
    shortcut_rate: float | None = None
    #: accuracy of a model that answers only by the shortcut, on this cell's items (``None``:
    #: unknown, as in runs written before evaluation recorded it)
    shortcut_only_accuracy: float | None = None
    #: items whose shortcut answer is wrong, and the shortcut answers among them
    conflict_n: int | None = None
    conflict_shortcut_rate: float | None = None
    parse_failures: int | None = None
    #: prompts whose output parses to a valid answer of the task (``None``: old runs)
    well_formed_rate: float | None = None
    #: the chance reference: the answer right on most of the cell's items, and its accuracy
    #: there (:func:`iclft.icl.metrics.constant_answer`)
    constant_answer: str | None = None
    constant_accuracy: float | None = None
    # added by the runner: the stage that wrote the row; fine-tuned models: the optimizer
    # steps trained for, the examples seen, the run's directory and the checkpoint's
    # (``None``: the final model)
    stage: str | None = omit_unset()
    step: int | None = omit_unset()
    train_examples: int | None = omit_unset()
    ft_dir: str | None = omit_unset()
    checkpoint: str | None = written_with("step")

    @property
    def shots_text(self) -> str:
        """The shot count as tables show it: ``300``, or ``300 (247 used: context)`` when
        prompts were cut to fit the model's context (the mean demonstrations used)."""
        return shots_text(self.shots, self.shots_used_mean, self.truncated)

    @property
    def is_checkpoint(self) -> bool:
        """A fine-tuning checkpoint's row (rows without ``checkpoint``, as old runs wrote
        them, are final models)."""
        return self.checkpoint is not None

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "") -> CellResult:
        """Validate one JSON row; ``where`` (``file:line``) goes into the error message."""
        where = where or "result row"
        missing = [k for k in cls.REQUIRED if d.get(k) is None]
        if missing:
            raise UserError(f"{where}: result row lacks {', '.join(missing)}")
        acc = opt_float(d["accuracy"])
        if acc is None or not 0.0 <= acc <= 1.0:
            raise UserError(f"{where}: accuracy must be a number in [0, 1], got {d['accuracy']!r}")
        n, correct = opt_int(d.get("n")), opt_int(d.get("correct"))
        if correct is None and n is not None:
            correct = int(round(acc * n))
        sets_acc = d.get("set_accuracies")
        set_accuracies = None
        if isinstance(sets_acc, list):
            set_accuracies = [v for v in map(opt_float, sets_acc) if v is not None] or None
        ints = ("truncated", "n_scored", "conflict_n", "parse_failures", "step", "max_new_tokens")
        floats = (
            "shots_used_mean", "set_sd", "ci_low", "ci_high", "substring_accuracy",
            "shortcut_rate", "shortcut_only_accuracy", "conflict_shortcut_rate",
            "well_formed_rate", "constant_accuracy",
        )  # fmt: skip
        strs = ("demos", "chat_template", "scoring", "protocol", "interval", "stage", "ft_dir",
                "constant_answer")  # fmt: skip
        return cls(
            model=str(d["model"]),
            task=str(d["task"]),
            variant=str(d["variant"]),
            method=str(d["method"]),
            shots=opt_int(d.get("shots")) or 0,
            split=str(d.get("split") or "test"),
            demo_sets=opt_int(d.get("demo_sets")) or 1,
            set_accuracies=set_accuracies,
            seed=opt_int(d.get("seed")) or 0,
            n=n,
            correct=correct,
            accuracy=acc,
            train_examples=opt_int(d.get("train_examples")),
            checkpoint=_opt_str(d.get("checkpoint")),
            **{k: opt_int(d.get(k)) for k in ints},
            **{k: opt_float(d.get(k)) for k in floats},
            **{k: _opt_str(d.get(k)) for k in strs},
        )


#: the setting a claim of learning must beat besides the baseline: always giving the answer
#: that is right on most of the items (a ``b_method`` of comparisons)
CONSTANT = "constant"


def format_p(p: float) -> str:
    """A p-value for tables: ``<0.001`` below 0.001 (never ``0``), else two significant
    digits."""
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def p_text(p: float | None, name: str = "p") -> str:
    """``p=0.031``, ``p<0.001``, or ``p –`` where no p was computed (``None``)."""
    if p is None:
        return f"{name} –"
    text = format_p(p)
    return f"{name}{text}" if text.startswith("<") else f"{name}={text}"


@dataclass(frozen=True, kw_only=True)
class Comparison(Record):
    """One paired comparison of setting ``a`` with setting ``b`` on the same items: a row of
    ``comparisons.jsonl`` (how it is computed: :mod:`iclft.icl.compare`). Rows of older
    runs lack the fields after ``p_values_per_set`` and decide on ``p_value``."""

    model: str
    task: str
    variant: str
    a_method: str
    a_shots: int
    b_method: str
    b_shots: int
    n: int
    accuracy_a: float
    accuracy_b: float
    diff: float
    #: 95% interval of ``diff``: the values the test below does not reject
    ci_low: float
    ci_high: float
    a_only: int
    b_only: int
    #: the test's two-sided p-value of "no difference" (unadjusted)
    p_value: float
    seeds: list[int]
    #: bootstrap replicates (rows of older runs, whose test resampled)
    n_boot: int | None = omit_unset()
    #: how the interval and the p-value were made, in words
    interval: str
    test: str
    #: demonstration sets of each side (1 for a 0-shot setting)
    a_sets: int = 1
    b_sets: int = 1
    #: with several sets: the exact McNemar p-value of each set of the side that has them
    p_values_per_set: list[float] | None = None
    #: the test's short name for sentences and tables (``paired t``, ``crossed t``)
    test_name: str | None = None
    #: one set per side: the exact McNemar p-value on the discordant items, for reference
    p_mcnemar: float | None = None
    #: ``p_value`` adjusted for every comparison of the run, and how (the decision uses it)
    p_adjusted: float | None = None
    adjustment: str | None = None

    def flipped(self) -> Comparison:
        """The same test seen from ``b``'s side (``diff`` = acc_b - acc_a)."""
        return replace(
            self,
            a_method=self.b_method,
            a_shots=self.b_shots,
            b_method=self.a_method,
            b_shots=self.a_shots,
            accuracy_a=self.accuracy_b,
            accuracy_b=self.accuracy_a,
            diff=-self.diff,
            ci_low=-self.ci_high,
            ci_high=-self.ci_low,
            a_only=self.b_only,
            b_only=self.a_only,
            a_sets=self.b_sets,
            b_sets=self.a_sets,
        )

    @property
    def name(self) -> str:
        """The test's short name (older rows: McNemar, or their bootstrap with sets)."""
        if self.test_name:
            return self.test_name
        return "McNemar" if max(self.a_sets, self.b_sets) == 1 else "bootstrap"

    @property
    def decision_p(self) -> float:
        """The p-value that decides: the adjusted one where the row has it."""
        return self.p_value if self.p_adjusted is None else self.p_adjusted

    @property
    def sign(self) -> int:
        """1 / -1 when the deciding p-value is below :data:`ALPHA` and ``a`` scores higher /
        lower than ``b``; 0 when the test does not decide."""
        if self.decision_p >= ALPHA or self.diff == 0:
            return 0
        return 1 if self.diff > 0 else -1

    def text(self) -> str:
        """``paired difference +0.25 [+0.10, +0.40], paired t p=0.003, adjusted p=0.04 (holm
        over 144 comparisons)``: the test that decides, with its interval."""
        out = (
            f"paired difference {self.diff:+.2f} [{self.ci_low:+.2f}, {self.ci_high:+.2f}], "
            f"{p_text(self.p_value, self.name + ' p')}"
        )
        if self.p_adjusted is not None:
            out += f", {p_text(self.p_adjusted, 'adjusted p')}"
            out += f" ({self.adjustment})" if self.adjustment else ""
        return out


@dataclass(frozen=True, kw_only=True)
class CurvePoint(Record):
    """One row of a fine-tuning run's ``curves.csv``: 0-shot accuracy of one task and variant
    at a training step, beside the training loss and learning rate logged at that step (empty
    before the first step).

    ``items`` says what was scored: ``curve`` (the curve's own held-out items,
    :func:`iclft.tasks.splits.curve_items`, judged by the run's ``scoring`` and ``protocol``);
    empty in curves written before (iclft's item layout 1), which scored the first ``n`` test
    items with generation and exact match."""

    step: int
    examples_seen: int
    loss: float | None = None
    learning_rate: float | None = None
    task: str
    variant: str
    accuracy: float | None = None
    correct: int | None = None
    n: int | None = None
    items: str | None = None
    scoring: str | None = None
    protocol: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "") -> CurvePoint:
        """One CSV (strings) or JSON row; ``examples_seen`` defaults to ``step``."""
        step = opt_int(d.get("step"))
        if step is None or not d.get("task") or not d.get("variant"):
            raise UserError(f"{where or 'curve row'}: a curve row needs step, task and variant")
        seen = opt_int(d.get("examples_seen"))
        return cls(
            step=step,
            examples_seen=step if seen is None else seen,
            loss=opt_float(d.get("loss")),
            learning_rate=opt_float(d.get("learning_rate")),
            task=str(d["task"]),
            variant=str(d["variant"]),
            accuracy=opt_float(d.get("accuracy")),
            correct=opt_int(d.get("correct")),
            n=opt_int(d.get("n")),
            items=d.get("items") or None,
            scoring=d.get("scoring") or None,
            protocol=d.get("protocol") or None,
        )


#: a curve point's ``items`` (and its predictions' ``split``): the curve's own held-out items
CURVE_ITEMS = "curve"
#: the columns of ``curves.csv``, in order
CURVE_FIELDS = [f.name for f in fields(CurvePoint)]


def renamed_keys(d: Mapping[str, Any], old_to_new: Mapping[str, str]) -> dict[str, Any]:
    """``d`` with keys older files wrote under another name renamed (the reader maps them)."""
    out = dict(d)
    for old, new in old_to_new.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def _as_dict(v: Any) -> dict[str, Any]:
    return dict(v) if isinstance(v, Mapping) else {}


@dataclass(frozen=True, kw_only=True)
class CircuitsResult(Record):
    """``circuits.json`` (:func:`iclft.analysis.pipeline.run_circuits`): the top-level fields;
    each setting's and each shift's entry stays a JSON dict (docs/records.md lists their keys).
    ``from_json`` reads partial files too (missing fields: empty)."""

    task: str | None = None
    #: the CircuitSpec it ran with
    spec: dict[str, Any] = field(default_factory=dict)
    #: ``LoadedModel.describe()`` of the base model and of the fine-tuned one (``None``: none)
    model: dict[str, Any] = field(default_factory=dict)
    ft_model: dict[str, Any] | None = None
    #: ``{arch, n_layers, n_heads}``
    anatomy: dict[str, Any] = field(default_factory=dict)
    n_pairs: int | None = None
    n_pairs_skipped_unequal_tokens: int | None = None
    #: the patching metric and effect, in words
    metric: str | None = None
    effect: str | None = None
    positions: str | None = None
    #: setting (base, icl, ft) -> its gap check, identification, effects, circuit, checks
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: one entry per pair of settings compared (circuit shift with its noise floor and test)
    shifts: list[dict[str, Any]] = field(default_factory=list)
    #: is ICL's shift from base larger than fine-tuning's (``None``: no fine-tuned model)
    shift_comparison: dict[str, Any] | None = omit_unset()

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "") -> CircuitsResult:
        settings = {str(k): dict(v) for k, v in _as_dict(d.get("settings")).items()
                    if isinstance(v, Mapping)}  # fmt: skip
        raw = d.get("shifts") if isinstance(d.get("shifts"), list) else []
        shifts = [dict(s) for s in raw if isinstance(s, Mapping)]
        return cls(
            task=d["task"] if isinstance(d.get("task"), str) else None,
            spec=renamed_keys(_as_dict(d.get("spec")), CIRCUIT_RENAMED),
            model=_as_dict(d.get("model")),
            ft_model=_as_dict(d.get("ft_model")) or None,
            anatomy=_as_dict(d.get("anatomy")),
            n_pairs=opt_int(d.get("n_pairs")),
            n_pairs_skipped_unequal_tokens=opt_int(d.get("n_pairs_skipped_unequal_tokens")),
            metric=_opt_str(d.get("metric")),
            effect=_opt_str(d.get("effect")),
            positions=_opt_str(d.get("positions")),
            settings=settings,
            shifts=shifts,
            shift_comparison=_as_dict(d.get("shift_comparison")) or None,
        )


@dataclass(frozen=True, kw_only=True)
class SimilarityResult(Record):
    """``similarity.json`` (:func:`iclft.analysis.similarity.run_similarity`): the top-level
    fields; the metric tables stay JSON dicts (docs/records.md lists their keys).
    ``from_json`` reads partial files too (missing fields: empty)."""

    task: str | None = None
    #: the SimilaritySpec it ran with
    spec: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    anatomy: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    #: where the numbers differ from the reference, in words (position, keys, interval, ...)
    protocol: dict[str, Any] = field(default_factory=dict)
    n_queries: int | None = None
    #: queries left out, ``[{id, reason}]``
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: the learning-rate grid and the rate chosen per update (on held-out queries)
    lr: dict[str, Any] = field(default_factory=dict)
    #: flat ``{name: {value, ci_low, ci_high}}`` of every metric and accuracy
    summary: dict[str, Any] = field(default_factory=dict)
    #: model (trained, untrained) -> metric -> setting -> interval
    metrics: dict[str, Any] = field(default_factory=dict)
    f2t: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    update_norms: dict[str, Any] = field(default_factory=dict)
    #: what casting each fp32 update to the evaluation dtype kept (``None``: nothing cast)
    update_cast: dict[str, Any] | None = None
    per_query: dict[str, Any] = field(default_factory=dict)
    #: the layers SimAM and SimAM_delta average over (``None`` in older files: every layer)
    simam_layers: list[int] | None = omit_unset()

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "") -> SimilarityResult:
        dicts = ("spec", "model", "anatomy", "protocol", "lr", "summary", "metrics", "f2t",
                 "accuracy", "update_norms", "per_query")  # fmt: skip
        return cls(
            task=d["task"] if isinstance(d.get("task"), str) else None,
            dtype=_opt_str(d.get("dtype")),
            n_queries=opt_int(d.get("n_queries")),
            skipped=[dict(x) for x in d.get("skipped") or [] if isinstance(x, Mapping)],
            update_cast=_as_dict(d.get("update_cast")) or None,
            simam_layers=[int(x) for x in d["simam_layers"]]
            if isinstance(d.get("simam_layers"), list)
            else None,
            **{k: _as_dict(d.get(k)) for k in dicts},
        )


@dataclass(frozen=True, kw_only=True)
class StageRecord(Record):
    """``stages/<key>.json``: a runner stage's completion record, written after every other
    output of the stage (its existence is what "complete" means). ``stage`` is the planned
    :class:`iclft.run.stages.Stage` as a dict; the body is what the stage produced: an evaluation
    stage's ``results`` rows, a fine-tuning stage's ``finetune`` summary (its directory, steps,
    final loss, trainable parameters, examples seen), an analysis stage's ``analysis`` (its
    directory; similarity adds its ``summary``)."""

    stage: dict[str, Any]
    seconds: float
    #: the item layout the stage was run under (:data:`iclft.tasks.splits.ITEM_LAYOUT`);
    #: absent in records written before it was recorded (layout 1)
    item_layout: int | None = omit_unset()
    results: list[CellResult] | None = omit_unset()
    finetune: dict[str, Any] | None = omit_unset()
    analysis: dict[str, Any] | None = omit_unset()

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.results is not None:
            out["results"] = [r.to_json() for r in self.results]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "") -> StageRecord:
        rows = d.get("results")
        return (
            super()
            .from_json(d, where)
            .replace(
                results=None
                if rows is None
                else [CellResult.from_json(r, f"{where}: results[{i}]") for i, r in enumerate(rows)]
            )
        )
