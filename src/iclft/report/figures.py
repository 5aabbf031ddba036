"""The report's figures, one PNG per model and kind, drawn on matplotlib's Agg canvas (no
display, no pyplot state). Every function copes with missing methods, variants and tasks: it
draws what is there and returns ``None`` when there is nothing to draw.

Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies); variants
are told apart by line style and marker as well as colour, never by colour alone.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from iclft.finetune.methods import METHOD_NAMES
from iclft.records import BASELINE, CURVE_ITEMS, ICL, CurvePoint, ft_arm, is_finetune
from iclft.report.data import (
    AnalysisFigure,
    Cell,
    RunData,
    file_slug,
    mean_known,
    method_sort_key,
)
from iclft.report.tables import HeadlineEntry, headline
from iclft.store import atomic_writer
from iclft.tasks import VARIANTS

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
#: colour and marker of each arm: the baseline and ICL, then the fine-tuning methods in the
#: order of :data:`~iclft.finetune.methods.METHOD_NAMES` (full, kv, lora, layer-causal)
METHOD_COLOURS = {
    BASELINE: "#000000",
    ICL: "#0072B2",
    **dict(zip(map(ft_arm, METHOD_NAMES), ("#D55E00", "#CC79A7", "#009E73", "#E69F00"))),
}
METHOD_MARKERS = {BASELINE: "o", ICL: "s", **dict(zip(map(ft_arm, METHOD_NAMES), "Dv^P"))}
#: per variant (clean, misleading): ICL lines (solid / dash-dot), horizontal references
#: (dashed / dotted) and marker fill
LINE = dict(zip(VARIANTS, ("-", "-.")))
REF_LINE = dict(zip(VARIANTS, ("--", ":")))
VARIANT_MARKER_FILL = dict(zip(VARIANTS, ("full", "none")))
#: fine-tuned models evaluated on the test items: the final model, and a listed checkpoint
FINAL_MARKER, CHECKPOINT_MARKER = "D", "X"
DPI = 110
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.facecolor": "white",
}


@dataclass(frozen=True)
class FigureFile:
    """A PNG written for the report, with the section it belongs to and its caption."""

    path: Path
    section: str  # "shots", "robustness", "curves", "efficiency", "analysis"
    caption: str


def method_colour(method: str) -> str:
    """The method's colour; unknown methods get sky blue."""
    return METHOD_COLOURS.get(method, "#56B4E9")


@contextmanager
def _figure(n_panels: int, ncols: int = 3, panel: tuple[float, float] = (3.8, 3.1)) -> Iterator:
    """A constrained-layout figure with ``n_panels`` axes in a grid, inside the report style."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.9), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[n_panels:]:
            ax.set_visible(False)
        yield fig, list(axes[:n_panels])


def _save(fig, path: Path) -> Path:
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _finish(fig, title: str, path: Path) -> None:
    """The figure's title, and its PNG written."""
    fig.suptitle(title, fontsize=12)
    _save(fig, path)


def _shared_legend(fig, axes: Sequence, ncol: int = 4) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, len(labels)))


def _model_tasks(data: RunData, model: str) -> list[str]:
    return [
        t for t in data.tasks if any(c.model == model and c.task == t for c in data.cells.values())
    ]


def _method_variant_legend(
    fig,
    methods: Sequence[str],
    variants: Sequence[str],
    refs: bool,
    final: bool = False,
    checkpoints: bool = False,
) -> None:
    """A compact legend: one colour per method, one line style per variant (for ICL lines and,
    with ``refs``, the horizontal references), the final-evaluation diamond and the
    checkpoint-evaluation marker."""
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D

    handles: list = [Line2D([], [], color=method_colour(m), lw=2.5) for m in methods]
    labels = ["ICL" if m == ICL else m for m in methods]
    for v in variants:
        line = Line2D(
            [],
            [],
            color="0.25",
            ls=LINE.get(v, "-"),
            marker="o",
            fillstyle=VARIANT_MARKER_FILL.get(v, "full"),
            lw=1.6,
            ms=5,
        )
        if refs:
            ref = Line2D([], [], color="0.25", ls=REF_LINE.get(v, "--"), lw=1.5)
            handles.append((line, ref))
            labels.append(f"{v} (line / reference)")
        else:
            handles.append(line)
            labels.append(v)
    if final:
        handles.append(Line2D([], [], color="0.25", marker=FINAL_MARKER, ls="", ms=6))
        labels.append("final 0-shot evaluation")
    if checkpoints:
        handles.append(Line2D([], [], color="0.25", marker=CHECKPOINT_MARKER, ls="", ms=7))
        labels.append("checkpoint 0-shot evaluation")
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(4, len(labels)),
        handler_map={tuple: HandlerTuple(ndivide=None, pad=0.6)},
        handlelength=3.2,
    )


def _symlog_x(ax, xs: Sequence[float]) -> None:
    """Log-scaled x axis that still shows 0 (linear between 0 and 1), with plain numbers."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("symlog", linthresh=1, linscale=0.6)
    top = max([1.0, *xs])
    ax.set_xlim(-0.15, top * 1.35)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))


def _band(ax, xs, cells: Sequence[Cell], colour: str, style: str, marker: str, fill: str, label):
    ys = [c.accuracy for c in cells]
    ax.fill_between(
        xs, [c.low for c in cells], [c.high for c in cells], color=colour, alpha=0.15, lw=0
    )
    ax.plot(
        xs, ys, ls=style, marker=marker, fillstyle=fill, color=colour, lw=1.8, ms=5, label=label
    )


def plot_accuracy_vs_shots(data: RunData, model: str, path: Path) -> FigureFile | None:
    """Accuracy against k per task: ICL lines with interval bands per variant; baseline and each
    fine-tuned model as labelled horizontal references (dashed clean, dotted misleading)."""
    tasks = _model_tasks(data, model)
    if not tasks:
        return None
    with _figure(len(tasks)) as (fig, axes):
        for ax, task in zip(axes, tasks):
            all_shots: list[float] = [0.0]
            for variant in data.variants:
                icl = data.cells_for(model, task, variant, ICL)
                if icl:  # k = 0 is the baseline: the line starts there when it was evaluated
                    icl = data.cells_for(model, task, variant, BASELINE)[:1] + icl
                    xs = [c.shots for c in icl]
                    all_shots += xs
                    fill = VARIANT_MARKER_FILL.get(variant, "full")
                    style = LINE.get(variant, "-")
                    _band(ax, xs, icl, method_colour(ICL), style, "o", fill, f"ICL {variant}")
                for c in data.cells_for(model, task, variant):
                    if c.method == ICL:
                        continue
                    ax.axhline(
                        c.accuracy,
                        color=method_colour(c.method),
                        ls=REF_LINE.get(variant, "--"),
                        lw=1.5,
                        label=f"{c.method} {variant}",
                    )
            _symlog_x(ax, all_shots)
            ticks = sorted(set(all_shots))
            ax.set_xticks(ticks, [str(int(t)) for t in ticks])
            ax.minorticks_off()
            ax.set(
                ylim=(-0.02, 1.02), title=task, xlabel="shots k", ylabel="accuracy (exact match)"
            )
        methods = sorted(
            {c.method for c in data.cells.values() if c.model == model}, key=method_sort_key
        )
        _method_variant_legend(fig, methods, data.variants, refs=True)
        _finish(fig, f"{model}: accuracy vs shots", path)
    caption = (
        f"{model}: accuracy against the number of in-context demonstrations k, per task. Bands: "
        "95% interval (Wilson over items; with several demonstration sets the crossed-design "
        "t interval over sets and items; across seeds widened to the seed range). Horizontal "
        "lines: 0-shot "
        "baseline and each fine-tuned model (dashed clean, dotted misleading)."
    )
    return FigureFile(path, "shots", caption)


SHORTCUT_COLOUR = "0.35"


@dataclass(frozen=True)
class RobustnessPanel:
    """One task's panel of the robustness figure: its headline entries with both variants, and
    where a model answering only by the shortcut lands (``None`` where the run did not record
    it; ``clean`` alone may be missing)."""

    task: str
    entries: tuple[HeadlineEntry, ...]
    shortcut_clean: float | None
    shortcut_misleading: float | None


def robustness_panels(data: RunData, model: str) -> list[RobustnessPanel]:
    """The panels :func:`plot_robustness` draws, one per task with a clean and a misleading
    cell; the shortcut-only accuracy is the mean over the panel's cells (they normally share
    their items, so the values agree)."""
    panels = []
    for task in _model_tasks(data, model):
        entries = tuple(
            e for e in _first_icl(headline(data, model, task)) if e.clean and e.misleading
        )
        if entries:
            sc_clean = mean_known(e.clean.shortcut_only_accuracy for e in entries if e.clean)
            sc_mis = mean_known(
                e.misleading.shortcut_only_accuracy for e in entries if e.misleading
            )
            panels.append(RobustnessPanel(task, entries, sc_clean, sc_mis))
    return panels


def _first_icl(entries: list[HeadlineEntry]) -> list[HeadlineEntry]:
    """The headline entries with ICL at its chosen k only (the fixed k's entry left out)."""
    icl = [e for e in entries if e.method == ICL]
    return [e for e in entries if e.method != ICL or e is icl[0]]


def draw_shortcut_reference(ax, panel: RobustnessPanel) -> bool:
    """A dashed line at the shortcut-only misleading accuracy and a star where a shortcut-only
    model sits (clean, misleading); nothing when the run did not record it."""
    y = panel.shortcut_misleading
    if y is None:
        return False
    ax.axhline(y, color=SHORTCUT_COLOUR, ls="--", lw=1.2, label="shortcut-only model")
    if panel.shortcut_clean is not None:
        ax.plot(
            panel.shortcut_clean,
            y,
            marker="*",
            ms=11,
            ls="",
            color=SHORTCUT_COLOUR,
            label="_shortcut-only model (point)",
        )
    return True


def plot_robustness(data: RunData, model: str, path: Path) -> FigureFile | None:
    """Clean accuracy (x) against misleading accuracy (y) for baseline, best ICL and each
    fine-tuning method, one panel per task, with the diagonal (the paper's Figure 3) and the
    shortcut-only reference, which differs by task (0 where the cue always misleads, 0.5 where
    it is uninformative)."""
    panels = robustness_panels(data, model)
    if not panels:
        return None
    drawn = False
    with _figure(len(panels), panel=(3.4, 3.4)) as (fig, axes):
        for ax, panel in zip(axes, panels):
            ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="_diag")
            drawn |= draw_shortcut_reference(ax, panel)
            for e in panel.entries:
                c, m = e.clean, e.misleading
                assert c is not None and m is not None
                colour = method_colour(e.method)
                ax.errorbar(
                    c.accuracy,
                    m.accuracy,
                    xerr=[[c.accuracy - c.low], [c.high - c.accuracy]],
                    yerr=[[m.accuracy - m.low], [m.high - m.accuracy]],
                    fmt=METHOD_MARKERS.get(e.method, "o"),
                    color=colour,
                    ms=7,
                    capsize=2,
                    lw=1,
                    label="ICL (chosen k)" if e.method == ICL else e.method,
                )
                if e.method == ICL:
                    ax.annotate(
                        f"k={e.shots}",
                        (c.accuracy, m.accuracy),
                        textcoords="offset points",
                        xytext=(6, 5),
                        fontsize=8,
                        color=colour,
                    )
            ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), aspect="equal", title=panel.task,
                   xlabel="clean accuracy", ylabel="misleading accuracy")  # fmt: skip
        _shared_legend(fig, axes, ncol=6)
        _finish(fig, f"{model}: robustness to misleading inputs", path)
    caption = (
        f"{model}: clean accuracy (x) vs misleading accuracy (y) for the 0-shot baseline, ICL at "
        "its k chosen by clean accuracy on held-out items (on the test items in runs without "
        "held-out items), and each fine-tuned model; bars are 95% intervals, the "
        "dotted diagonal is equal accuracy on both."
    )
    if drawn:
        caption += (
            " Dashed grey line: the misleading accuracy of a model that answers only by the "
            "shortcut, on the same items (the star: its clean and misleading accuracy); it is 0 "
            "where the cue always points the wrong way and about 0.5 where it is uninformative."
        )
    return FigureFile(path, "robustness", caption)


def _curve_series(points: Sequence[CurvePoint], task: str, variant: str) -> list[CurvePoint]:
    return [p for p in points if p.task == task and p.variant == variant and p.accuracy is not None]


def _test_evaluations(ax, data: RunData, model: str, method: str, tasks, colours) -> bool:
    """Mark the saved models of ``method`` evaluated on the test items on a curve panel, at
    their steps: checkpoints (X) and the final model (diamond), per task and variant. Returns
    whether a checkpoint was marked."""
    marked = False
    for task in tasks:
        for variant in VARIANTS:
            final = data.cell(model, task, variant, method)
            for c in [*data.checkpoint_cells(model, task, variant, method), final]:
                if c is None or c.step is None:
                    continue
                marked |= c is not final
                ax.plot(
                    c.step,
                    c.accuracy,
                    marker=FINAL_MARKER if c is final else CHECKPOINT_MARKER,
                    fillstyle=VARIANT_MARKER_FILL.get(variant, "full"),
                    color=colours[task],
                    ls="",
                    ms=7,
                    mew=1.4,
                    label="_test",
                )
    return marked


def curve_items_text(runs) -> str:
    """What the curves of ``runs`` scored, in words: their own held-out items, or (curves of
    iclft's item layout 1, whose points carry no ``items``) the first test items."""
    points = [p for r in runs for p in r.curve]
    if points and all(p.items == CURVE_ITEMS for p in points):
        how = sorted({f"{p.scoring}, {p.protocol} protocol" for p in points})
        return f"held-out items of their own (never trained on; scored {'; '.join(how)})"
    return (
        "the first test items (curves written by an older iclft, before curves had items of "
        "their own; scored by generation and exact match whatever the run's scoring)"
    )


def plot_finetune_curves(data: RunData, model: str, path: Path) -> FigureFile | None:
    """Per fine-tuning method of one model: training loss over steps (left) and 0-shot accuracy
    over steps per task and variant (right) (the paper's Figure 4), with the steps whose saved
    model was evaluated on the test items marked (dotted lines; its accuracies as markers)."""
    runs = [data.finetune_run(model, m) for m in data.ft_methods(model)]
    runs = [r for r in runs if r is not None and r.curve]
    if not runs:
        return None
    curve_tasks = [p.task for r in runs for p in r.curve]
    tasks = list(dict.fromkeys([*curve_tasks, *_model_tasks(data, model)]))
    colours = {t: OKABE_ITO[i % len(OKABE_ITO)] for i, t in enumerate(tasks)}
    with _figure(2 * len(runs), ncols=2, panel=(4.6, 2.9)) as (fig, axes):
        for i, run in enumerate(runs):
            ax_loss, ax_acc = axes[2 * i], axes[2 * i + 1]
            steps: dict[int, float] = {}
            for p in run.curve:
                if p.loss is not None:
                    steps[p.step] = p.loss
            if steps:
                xs = sorted(steps)
                ax_loss.plot(
                    xs,
                    [steps[x] for x in xs],
                    color=method_colour(run.method),
                    lw=1.8,
                    marker="o",
                    ms=3,
                    label="_loss",
                )
            else:
                ax_loss.text(
                    0.5,
                    0.5,
                    "no loss logged",
                    ha="center",
                    va="center",
                    transform=ax_loss.transAxes,
                    color="0.4",
                )
            evaluated = data.evaluated_steps(model, run.method)
            for step in evaluated:
                for ax in (ax_loss, ax_acc):
                    ax.axvline(step, color="0.55", ls=":", lw=1.2, label="_evaluated")
            span = [p.step for p in run.curve] + evaluated
            pad = max(1.0, 0.03 * (max(span) - min(span)))
            for ax in (ax_loss, ax_acc):
                ax.set_xlim(min(span) - pad, max(span) + pad)
            ax_loss.set(title=f"{run.method}: training loss", xlabel="step", ylabel="loss")
            for task in tasks:
                for variant in VARIANTS:
                    pts = _curve_series(run.curve, task, variant)
                    if pts:
                        ax_acc.plot(
                            [p.step for p in pts],
                            [p.accuracy for p in pts],
                            color=colours[task],
                            ls=LINE.get(variant, "-"),
                            marker="o",
                            fillstyle=VARIANT_MARKER_FILL.get(variant, "full"),
                            ms=4,
                            lw=1.6,
                            label=f"{task} {variant}",
                        )
            if evaluated:
                has_ckpt = _test_evaluations(ax_acc, data, model, run.method, tasks, colours)
                grey = dict(color="0.25", ls="", ms=7)
                ax_acc.plot([], [], marker=FINAL_MARKER, label="final model, test items", **grey)
                if has_ckpt:
                    ax_acc.plot(
                        [], [], marker=CHECKPOINT_MARKER, label="checkpoint, test items", **grey
                    )
                ax_acc.plot([], [], color="0.55", ls=":", lw=1.2, label="step evaluated")
            ax_acc.set(ylim=(-0.02, 1.02), title=f"{run.method}: 0-shot accuracy",
                       xlabel="step", ylabel="accuracy")  # fmt: skip
        _shared_legend(fig, axes, ncol=4)
        _finish(fig, f"{model}: fine-tuning curves", path)
    caption = (
        f"{model}: training loss and 0-shot accuracy on {curve_items_text(runs)} over "
        "fine-tuning steps, per method; solid lines clean, dash-dot misleading. Dotted vertical "
        "lines (where the "
        "results record steps): the steps whose saved model was evaluated 0-shot on the test "
        "items (each checkpoint listed in eval_checkpoints, and the final model), with those "
        "accuracies as crosses (checkpoints) and diamonds (final model), filled clean, hollow "
        "misleading."
    )
    return FigureFile(path, "curves", caption)


def plot_data_efficiency(data: RunData, model: str, path: Path) -> FigureFile | None:
    """Accuracy against the number of task examples the model was given: ICL (k demonstrations,
    0 = baseline) and fine-tuning (examples seen so far, from the curves; the final 0-shot
    evaluation as a diamond, each evaluated checkpoint as a cross), on one symlog x axis so that
    0 shows."""
    tasks = _model_tasks(data, model)
    ft_runs = {m: data.finetune_run(model, m) for m in data.ft_methods(model)}
    panels = []
    for task in tasks:
        has_icl = bool(data.cells_for(model, task, method=ICL))
        has_ft = any(
            c.train_examples is not None and is_finetune(c.method)
            for c in data.cells_for(model, task)
        ) or any(r is not None and any(p.task == task for p in r.curve) for r in ft_runs.values())
        if has_icl or has_ft:
            panels.append(task)
    if not panels:
        return None
    any_ckpt = False
    with _figure(len(panels)) as (fig, axes):
        for ax, task in zip(axes, panels):
            xs_all: list[float] = [0.0]
            steps_at: dict[float, int | None] = {}  # checkpoints' x: their step
            for variant in data.variants:
                fill = VARIANT_MARKER_FILL.get(variant, "full")
                style = LINE.get(variant, "-")
                line = data.cells_for(model, task, variant, BASELINE)[:1]
                line += data.cells_for(model, task, variant, ICL)
                line = [c for c in line if c.train_examples is not None]
                if line:
                    xs = [float(c.train_examples) for c in line]  # type: ignore[arg-type]
                    xs_all += xs
                    _band(ax, xs, line, method_colour(ICL), style, "o", fill, f"ICL {variant}")
                for method, run in ft_runs.items():
                    colour = method_colour(method)
                    pts = _curve_series(run.curve, task, variant) if run else []
                    if pts:
                        xs = [float(p.examples_seen) for p in pts]
                        xs_all += xs
                        ax.plot(
                            xs,
                            [p.accuracy for p in pts],
                            color=colour,
                            ls=style,
                            lw=1.5,
                            marker=".",
                            fillstyle=fill,
                            label=f"{method} {variant}",
                        )
                    final = data.cell(model, task, variant, method)
                    for c in [*data.checkpoint_cells(model, task, variant, method), final]:
                        if c is None or c.train_examples is None:
                            continue
                        ckpt = c is not final
                        any_ckpt |= ckpt
                        xs_all.append(float(c.train_examples))
                        ax.errorbar(
                            c.train_examples,
                            c.accuracy,
                            yerr=[[c.accuracy - c.low], [c.high - c.accuracy]],
                            fmt=CHECKPOINT_MARKER if ckpt else FINAL_MARKER,
                            fillstyle=fill,
                            color=colour,
                            ms=7 if ckpt else 6,
                            capsize=2,
                            label=f"{method} {variant} ({f'step {c.step}' if ckpt else 'final'})",
                        )
                        if ckpt:
                            steps_at[float(c.train_examples)] = c.step
            for x, step in sorted(steps_at.items()):  # once per step, along the top
                ax.annotate(
                    f"step {step}",
                    (x, 0.99),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    va="top",
                    rotation=90,
                    fontsize=7.5,
                    color="0.3",
                )
            _symlog_x(ax, xs_all)
            ax.set(ylim=(-0.02, 1.02), title=task, xlabel="task examples given", ylabel="accuracy")
        methods = (
            [ICL, *ft_runs]
            if any(data.cells_for(model, t, method=ICL) for t in panels)
            else list(ft_runs)
        )
        _method_variant_legend(
            fig, methods, data.variants, refs=False, final=bool(ft_runs), checkpoints=any_ckpt
        )
        _finish(fig, f"{model}: data efficiency", path)
    caption = (
        f"{model}: accuracy against the number of task examples the model was given: k "
        "demonstrations for ICL (0 is the baseline), examples seen so far for fine-tuning (lines "
        "from the training curves; diamonds: the final 0-shot evaluation; crosses, with their "
        "step written above: the checkpoints evaluated 0-shot, where eval_checkpoints lists any). "
        "Symlog x axis: linear between 0 and 1, logarithmic above."
    )
    return FigureFile(path, "efficiency", caption)


def copy_analysis_figure(fig: AnalysisFigure, figures_dir: Path) -> FigureFile:
    """Copy an analysis PNG into ``figures/`` (so report.md's relative links all point there)."""
    target = figures_dir / f"analysis__{file_slug(fig.relpath[len('analysis/') :])}"
    with atomic_writer(target, "wb") as f, open(fig.path, "rb") as src:
        shutil.copyfileobj(src, f)
    return FigureFile(target, "analysis", f"{fig.caption} ({fig.relpath})")


def make_figures(data: RunData, figures_dir: Path) -> list[FigureFile]:
    """Draw every figure the data allows into ``figures_dir``; returns them in report order."""
    out: list[FigureFile] = []
    kinds = (
        ("accuracy_vs_shots", plot_accuracy_vs_shots),
        ("robustness", plot_robustness),
        ("finetune_curves", plot_finetune_curves),
        ("data_efficiency", plot_data_efficiency),
    )
    for prefix, draw in kinds:
        for model in data.models:
            f = draw(data, model, figures_dir / f"{prefix}__{file_slug(model)}.png")
            if f is not None:
                out.append(f)
    out += [copy_analysis_figure(a, figures_dir) for a in data.analysis_figures]
    return out


__all__ = [
    "FigureFile",
    "make_figures",
    "plot_accuracy_vs_shots",
    "plot_data_efficiency",
    "plot_finetune_curves",
    "plot_robustness",
    "robustness_panels",
]
