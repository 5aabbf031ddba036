"""Reading a run directory and aggregating its results into cells (one per model, task, variant,
method and shot count, pooled over seeds).

A fine-tuning run may be evaluated at several steps: its final model and the checkpoints its
``eval_checkpoints`` lists. The cells (tables, sentences, every figure's main marks) hold the
final model's rows, so that the headline compares settings chosen before looking at test items;
the checkpoints' rows are pooled apart (:attr:`RunData.checkpoints`), one cell per step.

Interval of a cell: with one seed, the row's own interval (the 95% Wilson interval of its
items, or with several demonstration sets the crossed-design t interval over sets and items); with
several seeds and one demonstration set, the Wilson interval of the pooled items widened to
cover every seed's accuracy, so the band shows the spread between seeds and never claims more
certainty than the items give. With several seeds *and* demonstration sets, seeds are
independent draws of items and sets, so the half-widths below and above the mean combine as
``sqrt(sum(h_s^2)) / seeds`` (the normal approximation of the mean of independent estimates),
again widened to cover every seed's accuracy.

Held-out rows (``split: heldout``, clean items on which the best k is chosen) are pooled apart
(:attr:`RunData.heldout`) and never reach a table's test cells.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iclft.errors import UserError
from iclft.icl.metrics import wilson_interval
from iclft.layout import model_slug
from iclft.records import (
    BASELINE,
    ICL,
    CellResult,
    CircuitsResult,
    Comparison,
    CurvePoint,
    SimilarityResult,
    arms,
    is_finetune,
    shots_text,
)
from iclft.store import read_jsonl
from iclft.tasks import VARIANTS


def file_slug(text: str) -> str:
    """A file-name-safe version of ``text`` (model specs, relative paths)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("_") or "x"


def method_sort_key(method: str) -> tuple[int, str]:
    """Sort key that puts the known arms in :func:`iclft.records.arms` order first; unknown
    ones follow, sorted by name."""
    order = arms()
    return (order.index(method), "") if method in order else (99, method)


def train_examples(r: CellResult) -> int | None:
    """Examples a row's setting learned from: the row's own count, else (rows of ``iclft
    eval`` and old runs) the shots of an ICL row and 0 for the baseline."""
    if r.train_examples is not None:
        return r.train_examples
    return r.shots if r.method == ICL else 0 if r.method == BASELINE else None


CellKey = tuple[str, str, str, str, int]  # model, task, variant, method, shots
CheckpointKey = tuple[str, str, str, str, int]  # model, task, variant, method, step


@dataclass(frozen=True)
class Cell:
    """One (model, task, variant, method, shots) cell pooled over its seeds."""

    model: str
    task: str
    variant: str
    method: str
    shots: int
    accuracy: float  # mean over seeds
    low: float  # interval (see the module docstring)
    high: float
    n_seeds: int
    n: int | None  # items per seed (the smallest, if seeds differ)
    n_total: int | None  # items over all seeds
    std: float | None  # sample standard deviation over seeds (None with one seed)
    acc_min: float
    acc_max: float
    substring_accuracy: float | None
    shortcut_rate: float | None
    conflict_shortcut_rate: float | None
    shortcut_only_accuracy: float | None  # mean over the seeds that recorded it
    parse_failures: int | None  # summed over seeds
    train_examples: int | None
    scoring: str | None
    step: int | None = None  # fine-tuned models: the training step evaluated
    demo_sets: int = 1  # demonstration sets per seed (the fewest, if seeds differ)
    #: spread of accuracy across demonstration sets: sample sd over every (seed, set)
    set_sd: float | None = None
    set_min: float | None = None
    set_max: float | None = None
    #: the chance reference (mean over seeds): always answering the answer right on most
    #: items, that answer (when every seed has the same), and the share of well-formed outputs
    constant_accuracy: float | None = None
    constant_answer: str | None = None
    well_formed_rate: float | None = None
    #: demonstrations the prompts held on average (fewer than ``shots`` where the model's
    #: context cut them), and the prompts so cut (summed over seeds)
    shots_used_mean: float | None = None
    truncated: int | None = None

    @property
    def key(self) -> CellKey:
        return (self.model, self.task, self.variant, self.method, self.shots)

    @property
    def shots_text(self) -> str:
        """``300``, or ``300 (247 used: context)`` when prompts were cut to fit the context."""
        return shots_text(self.shots, self.shots_used_mean, self.truncated)

    def interval_text(self) -> str:
        """``0.62 [0.48, 0.74]``."""
        return f"{fmt(self.accuracy)} [{fmt(self.low)}, {fmt(self.high)}]"


def fmt(x: float | None, digits: int = 2) -> str:
    """A number for tables and sentences; an en dash for missing values."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def mean_known(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are known; ``None`` when none is."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def aggregate(rows: Iterable[CellResult]) -> dict[CellKey, Cell]:
    """Pool the rows of final models (every row but a checkpoint's) into cells: mean, spread
    and interval over seeds. A seed repeated within a cell (a result written twice) counts
    once: the last row wins."""
    return _aggregate(r for r in rows if r.split == "test")


def aggregate_heldout(rows: Iterable[CellResult]) -> dict[CellKey, Cell]:
    """The held-out rows (``split: heldout``) pooled as :func:`aggregate` pools test rows."""
    return _aggregate(r for r in rows if r.split == "heldout")


def _aggregate(rows: Iterable[CellResult]) -> dict[CellKey, Cell]:
    by_cell: dict[CellKey, dict[int, CellResult]] = {}
    for r in rows:
        if not r.is_checkpoint:
            by_cell.setdefault((r.model, r.task, r.variant, r.method, r.shots), {})[r.seed] = r
    return {key: _pool(key, seeds) for key, seeds in by_cell.items()}


def aggregate_checkpoints(rows: Iterable[CellResult]) -> dict[CheckpointKey, Cell]:
    """Pool the checkpoints' rows as :func:`aggregate` pools the others, one cell per step."""
    by_step: dict[CheckpointKey, dict[int, CellResult]] = {}
    for r in rows:
        if r.is_checkpoint and r.step is not None and r.split == "test":
            by_step.setdefault((r.model, r.task, r.variant, r.method, r.step), {})[r.seed] = r
    return {key: _pool(key[:4] + (0,), seeds) for key, seeds in by_step.items()}


def _pool(key: CellKey, seeds: Mapping[int, CellResult]) -> Cell:
    """One cell from its rows, one per seed."""
    rs = [seeds[s] for s in sorted(seeds)]
    accs = [r.accuracy for r in rs]
    mean = sum(accs) / len(accs)
    ns = [r.n for r in rs]
    have_counts = all(r.n is not None and r.correct is not None for r in rs)
    n_total = sum(r.n for r in rs) if have_counts else None  # type: ignore[misc]
    scored = sum((r.n_scored or r.n or 0) for r in rs)
    have_ci = all(r.ci_low is not None and r.ci_high is not None for r in rs)
    if len(rs) == 1 and have_ci:
        low, high = rs[0].ci_low, rs[0].ci_high
    elif have_ci and any(r.demo_sets > 1 for r in rs):  # independent seeds: combine widths
        below = math.sqrt(sum((r.accuracy - r.ci_low) ** 2 for r in rs)) / len(rs)  # type: ignore
        above = math.sqrt(sum((r.ci_high - r.accuracy) ** 2 for r in rs)) / len(rs)  # type: ignore
        low, high = max(0.0, mean - below), min(1.0, mean + above)
    elif have_counts and scored:
        low, high = wilson_interval(sum(r.correct for r in rs), scored)  # type: ignore[misc]
    else:
        low, high = min(accs), max(accs)
    low, high = min(low, min(accs)), max(high, max(accs))
    set_accs = [a for r in rs for a in (r.set_accuracies or ())]
    pf = [r.parse_failures for r in rs]
    tr = [r.truncated for r in rs]
    trains = {t for t in map(train_examples, rs) if t is not None}
    steps = {r.step for r in rs if r.step is not None}
    answers = {r.constant_answer for r in rs}
    return Cell(
        *key,
        accuracy=mean,
        low=low,
        high=high,
        n_seeds=len(rs),
        n=min(n for n in ns if n is not None) if any(n is not None for n in ns) else None,
        n_total=n_total,
        std=statistics.stdev(accs) if len(accs) > 1 else None,
        acc_min=min(accs),
        acc_max=max(accs),
        substring_accuracy=mean_known(r.substring_accuracy for r in rs),
        shortcut_rate=mean_known(r.shortcut_rate for r in rs),
        conflict_shortcut_rate=mean_known(r.conflict_shortcut_rate for r in rs),
        shortcut_only_accuracy=mean_known(r.shortcut_only_accuracy for r in rs),
        parse_failures=sum(p for p in pf if p is not None)
        if any(p is not None for p in pf)
        else None,
        train_examples=max(trains) if trains else None,
        scoring=rs[-1].scoring,
        step=max(steps) if steps else None,
        demo_sets=min(r.demo_sets for r in rs),
        set_sd=statistics.stdev(set_accs) if len(set_accs) > 1 else None,
        set_min=min(set_accs) if len(set_accs) > 1 else None,
        set_max=max(set_accs) if len(set_accs) > 1 else None,
        constant_accuracy=mean_known(r.constant_accuracy for r in rs),
        constant_answer=answers.pop() if len(answers) == 1 else None,
        well_formed_rate=mean_known(r.well_formed_rate for r in rs),
        shots_used_mean=mean_known(r.shots_used_mean for r in rs),
        truncated=sum(t for t in tr if t is not None) if any(t is not None for t in tr) else None,
    )


@dataclass(frozen=True)
class FinetuneRun:
    """A fine-tuning run found under ``finetune/<model_slug>/<method>/``."""

    model: str
    method: str
    directory: Path
    curve: tuple[CurvePoint, ...]
    manifest: Mapping[str, Any]

    @property
    def examples_seen(self) -> int | None:
        """Examples seen by the end of training (the curve's last point)."""
        return max((p.examples_seen for p in self.curve), default=None)


@dataclass(frozen=True)
class AnalysisFigure:
    """A PNG found under ``analysis/``; ``relpath`` is relative to the run directory."""

    path: Path
    relpath: str

    @property
    def caption(self) -> str:
        """A caption from the path: ``analysis/circuits/expression/heatmap_icl.png`` ->
        ``circuits · expression · heatmap icl``."""
        parts = Path(self.relpath).with_suffix("").parts[1:]
        return " · ".join(p.replace("_", " ") for p in parts) or self.relpath


@dataclass(frozen=True)
class AnalysisSummary:
    """Scalars from an analysis JSON (``summary`` dict; circuit ``shifts``) to show as a table."""

    relpath: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    kind: str = "summary"  # summary | circuits | circuit-shift


@dataclass
class RunData:
    """Everything the report reads from a run directory."""

    run_dir: Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[CellResult]
    cells: dict[CellKey, Cell]  # final models only: see the module docstring
    checkpoints: dict[CheckpointKey, Cell] = field(default_factory=dict)
    #: ICL cells on held-out clean items, on which the best k is chosen
    heldout: dict[CellKey, Cell] = field(default_factory=dict)
    finetune: list[FinetuneRun] = field(default_factory=list)
    analysis_figures: list[AnalysisFigure] = field(default_factory=list)
    analysis_summaries: list[AnalysisSummary] = field(default_factory=list)
    #: paired tests of settings on the same items (``comparisons.jsonl``; empty in old runs)
    comparisons: list[Comparison] = field(default_factory=list)
    #: every ``circuits.json`` under analysis/: (path relative to the run, its record)
    circuits: list[tuple[str, CircuitsResult]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # problems met while reading

    def comparison(
        self, model: str, task: str, variant: str, a: tuple[str, int], b: tuple[str, int]
    ) -> Comparison | None:
        """The paired test of setting ``a`` against ``b`` (``(method, shots)``), oriented so
        that ``diff`` is ``acc_a - acc_b``; ``None`` when the run has none."""
        for c in self.comparisons:
            if (c.model, c.task, c.variant) != (model, task, variant):
                continue
            if ((c.a_method, c.a_shots), (c.b_method, c.b_shots)) == (a, b):
                return c
            if ((c.a_method, c.a_shots), (c.b_method, c.b_shots)) == (b, a):
                return c.flipped()
        return None

    @property
    def models(self) -> list[str]:
        """Models in order of first appearance in results.jsonl."""
        return list(dict.fromkeys(r.model for r in self.rows))

    @property
    def tasks(self) -> list[str]:
        """Tasks in the config's order when it lists them, then in order of appearance."""
        seen = list(dict.fromkeys(r.task for r in self.rows))
        cfg = [t for t in _names(self.config.get("tasks")) if t in seen]
        return cfg + [t for t in seen if t not in cfg]

    @property
    def variants(self) -> list[str]:
        seen = set(r.variant for r in self.rows)
        return [v for v in VARIANTS if v in seen] + sorted(seen - set(VARIANTS))

    @property
    def methods(self) -> list[str]:
        return sorted({r.method for r in self.rows}, key=method_sort_key)

    def cell(self, model: str, task: str, variant: str, method: str, shots: int = 0) -> Cell | None:
        return self.cells.get((model, task, variant, method, shots))

    def cells_for(
        self, model: str, task: str, variant: str | None = None, method: str | None = None
    ) -> list[Cell]:
        """Cells of one model and task (optionally one variant/method), by shots."""
        out = [
            c
            for c in self.cells.values()
            if c.model == model
            and c.task == task
            and (variant is None or c.variant == variant)
            and (method is None or c.method == method)
        ]
        return sorted(out, key=lambda c: (method_sort_key(c.method), c.variant, c.shots))

    def ft_methods(self, model: str) -> list[str]:
        """Fine-tuning methods with results or curves for ``model``."""
        ms = {c.method for c in self.cells.values() if c.model == model and is_finetune(c.method)}
        ms |= {f.method for f in self.finetune if f.model == model}
        return sorted(ms, key=method_sort_key)

    def checkpoint_cells(self, model: str, task: str, variant: str, method: str) -> list[Cell]:
        """The evaluated checkpoints of one fine-tuning method (before its final model), by
        step."""
        out = [c for k, c in self.checkpoints.items() if k[:4] == (model, task, variant, method)]
        return sorted(out, key=lambda c: c.step or 0)

    def evaluated_steps(self, model: str, method: str) -> list[int]:
        """The steps at which ``method``'s model of ``model`` was evaluated on the test items:
        each checkpoint and the final model (as far as the rows record their step)."""
        cells = [*self.checkpoints.values(), *self.cells.values()]
        return sorted(
            {
                c.step
                for c in cells
                if c.model == model and c.method == method and c.step is not None
            }
        )

    def finetune_run(self, model: str, method: str) -> FinetuneRun | None:
        for f in self.finetune:
            if f.model == model and f.method == method:
                return f
        return None


def _names(value: Any) -> list[str]:
    """Names from a config entry that may be a list of strings or of dicts with ``name``."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    out = []
    for v in value:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, Mapping):
            for k in ("name", "spec", "model", "task"):
                if isinstance(v.get(k), str):
                    out.append(v[k])
                    break
    return out


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        notes.append(f"{path.name} could not be read ({e}); left out.")
        return {}
    if not isinstance(obj, dict):
        notes.append(f"{path.name} is not a JSON object; left out.")
        return {}
    return obj


def read_curve(path: Path) -> list[CurvePoint]:
    """Parse a ``curves.csv`` (empty loss/learning rate at step 0 are allowed)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = [CurvePoint.from_json(r, f"{path}:{ln}") for ln, r in enumerate(rows, 2)]
    return sorted(out, key=lambda p: (p.task, p.variant, p.step))


def _find_finetune(run_dir: Path, models: list[str], notes: list[str]) -> list[FinetuneRun]:
    root = run_dir / "finetune"
    if not root.is_dir():
        return []
    by_slug = {model_slug(m): m for m in models}
    runs = []
    for method_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        curves, man_path = method_dir / "curves.csv", method_dir / "manifest.json"
        if not curves.exists() and not man_path.exists():
            continue
        manifest = _read_json(man_path, notes)
        spec = (
            manifest.get("model", {}).get("spec")
            if isinstance(manifest.get("model"), dict)
            else None
        )
        slug = method_dir.parent.name
        model = by_slug.get(slug) or (spec if isinstance(spec, str) else slug.replace("__", "/"))
        method = method_dir.name
        if not is_finetune(method):
            method = f"ft-{method}"
        curve: list[CurvePoint] = []
        if curves.exists():
            try:
                curve = read_curve(curves)
            except (UserError, OSError, csv.Error) as e:
                notes.append(f"{curves.relative_to(run_dir)}: {e}; curve left out.")
        runs.append(FinetuneRun(model, method, method_dir, tuple(curve), manifest))
    return runs


def _scalar(v: Any) -> str | None:
    """A table cell for a scalar or an ``{value, ci_low, ci_high}`` dict; None otherwise."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return None if v is None else str(v)
    if isinstance(v, (int, float)):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    if isinstance(v, Mapping) and "value" in v and set(v) <= {"value", "ci_low", "ci_high"}:
        val = v.get("value")
        if not isinstance(val, (int, float)):
            return "–"
        lo, hi = v.get("ci_low"), v.get("ci_high")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            return f"{val:.3g} [{lo:.3g}, {hi:.3g}]"
        return f"{val:.3g}"
    return None


def _similarity_summaries(obj: SimilarityResult, rel: str) -> list[AnalysisSummary]:
    """similarity.json: the controls table (trained and untrained model; GD, layer-causal GD,
    their random controls, Dai's uniform baseline, ZSL), accuracies with Dai's f2t subset
    sizes, and the protocol lines that say where the numbers differ from the reference."""
    from iclft.analysis.similarity_table import controls_rows, extra_rows

    task = f" ({obj.task})" if obj.task else ""
    n = obj.n_queries
    cols, rows = controls_rows(obj)
    out = []
    if rows:
        title = f"{rel}: ICL vs GD with controls{task}, {n} queries, mean [95% CI]"
        out.append(AnalysisSummary(title, cols, tuple(rows)))
    extra = extra_rows(obj)
    if extra:
        out.append(AnalysisSummary(f"{rel}: accuracy and protocol{task}", ("quantity", "value"),
                                   tuple(extra)))  # fmt: skip
    return out


def _summaries(path: Path, rel: str, obj: Mapping[str, Any]) -> list[AnalysisSummary]:
    if path.name == "similarity.json" and isinstance(obj.get("metrics"), Mapping):
        return _similarity_summaries(SimilarityResult.from_json(obj, rel), rel)
    out = []
    summary = obj.get("summary")
    if isinstance(summary, Mapping):
        rows = tuple((str(k), s) for k, v in summary.items() if (s := _scalar(v)) is not None)
        if rows:
            out.append(AnalysisSummary(rel, ("quantity", "value"), rows))
    out += _circuit_tables(CircuitsResult.from_json(obj, rel), rel)
    return out


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        obj = obj.get(k) if isinstance(obj, Mapping) else None
    return obj


def _ratio(v: Any) -> str:
    return f"{v:.3g}x" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _circuit_tables(obj: CircuitsResult, rel: str) -> list[AnalysisSummary]:
    """circuits.json: one row per setting (gap guard, attribution checked against exact) and
    one per shift (distances beside their split-half noise floor; "not identified" instead of
    the distances when a setting's gap interval reaches 0)."""
    out = []
    task = f" ({obj.task})" if obj.task else ""
    if obj.settings:
        rows = []
        for name, st in obj.settings.items():
            g = st.get("gap_check")
            gap = "–"
            if isinstance(g, Mapping):
                gap = _scalar(
                    {"value": g.get("gap_mean"), "ci_low": g.get("gap_ci_low"),
                     "ci_high": g.get("gap_ci_high")}
                ) or "–"  # fmt: skip
            ident = st.get("identified")
            status = "–" if ident is None else "identified" if ident else "NOT IDENTIFIED"
            a = st.get("attribution_check")
            rho = _scalar(a.get("spearman")) if isinstance(a, Mapping) else None
            ov = (
                f"{a.get('top_k_overlap')}/{a.get('top_k')} (of {a.get('n_remeasured')})"
                if isinstance(a, Mapping)
                else "–"
            )
            scale = (
                _scalar(a.get("exact_over_attribution_top_k")) if isinstance(a, Mapping) else None
            )
            rows.append(
                (
                    str(name),
                    str(st.get("shots", "–")),
                    gap,
                    status,
                    _scalar(st.get("circuit_faithfulness")) or "–",
                    rho or "–",
                    ov,
                    scale or "–",
                )
            )
        if rows:
            cols = (
                "setting",
                "shots",
                "clean-corrupt gap [95%]",
                "circuit",
                "faithfulness",
                "attribution vs exact: Spearman [95%]",
                "top-k overlap",
                "exact / attribution (top-k)",
            )
            out.append(AnalysisSummary(f"{rel}: circuits{task}", cols, tuple(rows), "circuits"))
    if obj.shifts:
        rows2 = []
        for sh in obj.shifts:
            status = sh.get("status", "identified")
            cells = [f"{sh.get('from', '?')} → {sh.get('to', '?')}"]
            if status != "identified":
                why = ", ".join(str(x) for x in sh.get("not_identified") or [])
                cells.append(f"not identified ({why})" if why else "not identified")
                cells += ["–"] * 9
                rows2.append(tuple(cells))
                continue
            cells.append("identified")
            test = sh.get("test") if isinstance(sh.get("test"), Mapping) else {}
            cells.append(f"{test['p_value']:.2g}" if test.get("p_value") is not None else "–")
            for stat in ("jaccard_distance", "cosine_distance"):
                f = _get(sh, "noise_floor", "all", stat)
                cells += [
                    _scalar(sh.get(stat)) or "–",
                    _scalar(_get(f, "floor")) or "–",
                    _ratio(_get(f, "shift_over_floor")),
                    _ratio(_get(f, "half_shift_over_floor")),
                ]
            rows2.append(tuple(cells))
        cols2 = (
            "shift",
            "status",
            "permutation p (1 - cos)",
            "Jaccard distance [95%]",
            "split-half floor",
            "shift / floor",
            "half-shift / floor",
            "1 - cos [95%]",
            "split-half floor",
            "shift / floor",
            "half-shift / floor",
        )
        out.append(
            AnalysisSummary(f"{rel}: circuit shift{task}", cols2, tuple(rows2), "circuit-shift")
        )
    return out


def _truncation_notes(data: RunData) -> list[str]:
    """One note per cell whose prompts held fewer demonstrations than its shot count."""
    cells = [*data.cells.values(), *data.heldout.values()]
    held = set(map(id, data.heldout.values()))
    return [
        f"{c.model} {c.task} {c.variant}{' (held-out)' if id(c) in held else ''} {c.method} "
        f"k={c.shots}: {c.truncated} prompts did not fit the model's context with {c.shots} "
        f"demonstrations and were cut; shots used: {c.shots_text}."
        for c in sorted(cells, key=lambda c: (c.model, c.task, c.method, c.shots, c.variant))
        if c.truncated
    ]


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; raise :class:`UserError` when it has no results to report."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} does not exist")
    results = run_dir / "results.jsonl"
    raw = read_jsonl(results)
    if not raw:
        raise UserError(f"no results in {run_dir}; run `iclft run` first")
    rows = [CellResult.from_json(d, f"{results}:{i}") for i, d in enumerate(raw, 1)]
    notes: list[str] = []
    config = _read_json(run_dir / "config.json", notes)
    manifest = _read_json(run_dir / "manifest.json", notes)
    models = list(dict.fromkeys(r.model for r in rows))
    data = RunData(
        run_dir,
        config,
        manifest,
        rows,
        aggregate(rows),
        aggregate_checkpoints(rows),
        aggregate_heldout(rows),
        notes=notes,
    )
    notes += _truncation_notes(data)
    data.finetune = _find_finetune(run_dir, models, notes)
    data.comparisons = [Comparison.from_json(d) for d in read_jsonl(run_dir / "comparisons.jsonl")]
    for key, c in list(data.cells.items()):  # ft rows without train_examples: from the curve
        run = data.finetune_run(c.model, c.method) if is_finetune(c.method) else None
        if c.train_examples is None and run is not None and run.examples_seen is not None:
            data.cells[key] = replace(c, train_examples=run.examples_seen)
    analysis = run_dir / "analysis"
    if analysis.is_dir():
        for p in sorted(analysis.rglob("*.png")):
            data.analysis_figures.append(AnalysisFigure(p, p.relative_to(run_dir).as_posix()))
        for p in sorted(analysis.rglob("*.json")):
            if p.name in ("circuits.json", "similarity.json") or p.name.endswith("summary.json"):
                rel = p.relative_to(run_dir).as_posix()
                obj = _read_json(p, notes)
                data.analysis_summaries.extend(_summaries(p, rel, obj))
                if p.name == "circuits.json" and obj:
                    data.circuits.append((rel, CircuitsResult.from_json(obj, rel)))
    return data
