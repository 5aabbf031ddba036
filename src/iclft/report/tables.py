"""The headline table (baseline / best ICL / each fine-tuning method, clean and misleading),
one sentence per task computed from its numbers, and the CSV tables of the report."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclft.records import BASELINE, CONSTANT, ICL, Comparison, is_finetune, p_text
from iclft.report.data import Cell, RunData, fmt
from iclft.store import atomic_writer
from iclft.tasks import VARIANTS


@dataclass(frozen=True)
class HeadlineEntry:
    """One line of the headline table: a setting of one model on one task."""

    model: str
    task: str
    label: str  # "baseline", "ICL (k=8)", "ft-full"
    method: str
    shots: int
    clean: Cell | None
    misleading: Cell | None

    def get(self, variant: str) -> Cell | None:
        return self.clean if variant == "clean" else self.misleading


#: how the headline's ICL k was chosen (the second part of its label)
HELDOUT, ON_TEST = "best on held-out", "best on test items"


def best_icl_shots(data: RunData, model: str, task: str) -> tuple[int, str] | None:
    """``(k, basis)``: the shot count with the highest ICL accuracy on the held-out clean items
    (``basis`` :data:`HELDOUT`), ties to the fewest shots. Runs without held-out items fall back
    to the test items' clean accuracy (misleading when there is no clean variant), an
    optimistic selection that ``basis`` (:data:`ON_TEST`) names. ``None``: no ICL cells."""
    held = [c for c in data.heldout.values() if (c.model, c.task, c.method) == (model, task, ICL)]
    if held:
        return max(held, key=lambda c: (c.accuracy, -c.shots)).shots, HELDOUT
    for variant in VARIANTS:  # clean first
        cells = data.cells_for(model, task, variant, ICL)
        if cells:
            return max(cells, key=lambda c: (c.accuracy, -c.shots)).shots, ON_TEST
    return None


def fixed_icl_shots(data: RunData, model: str, task: str) -> int | None:
    """The k fixed before looking at any item: the config's ``fixed_shots`` when it was
    evaluated, else the largest evaluated k. ``None``: no ICL cells."""
    ks = sorted({c.shots for c in data.cells_for(model, task, method=ICL)})
    if not ks:
        return None
    want = data.config.get("fixed_shots")
    return want if isinstance(want, int) and want in ks else ks[-1]


def headline(data: RunData, model: str, task: str) -> list[HeadlineEntry]:
    """Baseline, ICL at the chosen k (first: the sentences lead with it) and at the fixed k,
    and each fine-tuning method of one model on one task (the present ones)."""
    out = []

    def add(label: str, method: str, shots: int) -> None:
        clean = data.cell(model, task, "clean", method, shots)
        mis = data.cell(model, task, "misleading", method, shots)
        cut = [c for c in (clean, mis) if c is not None and c.truncated]
        if cut:  # the k asked for, and the demonstrations that fit the context
            label = label.replace(f"k={shots}", f"k={cut[0].shots_text}", 1)
        if clean or mis:
            out.append(HeadlineEntry(model, task, label, method, shots, clean, mis))

    add(BASELINE, BASELINE, 0)
    best, fixed = best_icl_shots(data, model, task), fixed_icl_shots(data, model, task)
    if best is not None:
        k, basis = best
        add(f"ICL (k={k}, {basis}" + (", = fixed k)" if k == fixed else ")"), ICL, k)
    if fixed is not None and (best is None or fixed != best[0]):
        add(f"ICL (k={fixed}, fixed)", ICL, fixed)
    for m in data.ft_methods(model):
        add(m, m, 0)
    return out


def compare(a: Cell, b: Cell) -> int:
    """1 if ``a``'s interval lies wholly above ``b``'s, -1 if wholly below, 0 if they overlap."""
    if a.low > b.high:
        return 1
    if a.high < b.low:
        return -1
    return 0


def _n_text(*cells: Cell) -> str:
    ns = [c.n for c in cells if c.n is not None]
    if not ns:
        return "with these intervals"
    seeds = min(c.n_seeds for c in cells)
    return f"at n={min(ns)}" + (f" × {seeds} seeds" if seeds > 1 else "")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


#: a setting: ``(method, shots)``
Setting = tuple[str, int]
#: ``paired(a, b, variant)``: the paired test of two settings on the same items
Paired = Callable[[Setting, Setting, str], Comparison | None]


def _no_pairs(a: Setting, b: Setting, variant: str) -> Comparison | None:
    return None


def _short(test: Comparison) -> str:
    """``paired t p=0.003, adjusted p=0.04``: the deciding test without its interval."""
    text = p_text(test.p_value, test.name + " p")
    if test.p_adjusted is not None:
        text += ", " + p_text(test.p_adjusted, "adjusted p")
    return text


def beats_constant(e: HeadlineEntry, variant: str, paired: Paired) -> str:
    """The clause a claim that ``e`` learned needs: whether it beats always giving the answer
    right on most items (its paired test, adjusted with the others); '' without one."""
    test = paired((e.method, e.shots), (CONSTANT, 0), variant)
    if test is None:
        return ""
    cell = e.get(variant)
    answer = cell.constant_answer if cell is not None else None
    what = f'always answering "{answer}"' if answer is not None else "the constant answer"
    on = f"{fmt(test.accuracy_b)} on these items; {_short(test)}"
    if test.sign > 0:
        return f", and beats {what} ({on})"
    return f", but does not beat {what} ({on})"


def sentence(
    entries: Sequence[HeadlineEntry],
    task: str,
    model: str | None = None,
    paired: Paired = _no_pairs,
) -> str:
    """One sentence stating what the numbers of one task say, hedged where they do not decide.

    The lead setting is ICL when present (else the best fine-tuning, else the baseline); its
    clean accuracy is compared with the best fine-tuning (by clean accuracy) or the baseline,
    then its misleading accuracy with its clean one, with the rate of shortcut answers.
    Settings scored on the same items are compared by their paired test when the run has one
    (its adjusted p-value below :data:`iclft.records.ALPHA` decides, and is printed with the
    test), else by whether their intervals overlap; misleading vs clean (different items)
    always by intervals. A setting that wins (ICL or a fine-tuned model) must also beat the
    constant answer on the same items, and the sentence says whether it does."""
    where = f"On {task}" + (f" ({model})" if model else "")
    if not entries:
        return f"{where}, nothing was evaluated."
    main = "clean" if any(e.clean for e in entries) else "misleading"
    have = [e for e in entries if e.get(main)]
    base = next((e for e in have if e.method == BASELINE), None)
    icl = next((e for e in have if e.method == ICL), None)
    fts = [e for e in have if is_finetune(e.method)]
    ft = max(fts, key=lambda e: e.get(main).accuracy) if fts else None  # type: ignore[union-attr]

    def acc(e: HeadlineEntry, v: str = main) -> str:
        return fmt(e.get(v).accuracy)  # type: ignore[union-attr]

    def name(e: HeadlineEntry) -> str:
        if e.method == ICL:
            return f"ICL (k={e.shots})"
        if e.method == BASELINE:
            return "the 0-shot baseline"
        return f"the best fine-tuning ({e.label})" if len(fts) > 1 else f"fine-tuning ({e.label})"

    lead = icl or ft or base
    other = (ft or base) if icl else base
    if lead is None:
        return f"{where}, nothing was evaluated."
    a = lead.get(main)
    parts: list[str] = []
    if other is None or other is lead:
        parts.append(f"{where}, only {name(lead)} was evaluated: {acc(lead)} {main}")
    else:
        b = other.get(main)
        test = paired((lead.method, lead.shots), (other.method, other.shots), main)
        c = test.sign if test else compare(a, b)  # type: ignore[arg-type]
        why = f" ({test.text()})" if test else ""
        winner = lead if c > 0 else other if c < 0 else None
        chance = (
            beats_constant(winner, main, paired)
            if winner is not None and winner.method != BASELINE
            else ""
        )
        if c > 0:
            parts.append(
                f"{where}, {name(lead)} reaches {acc(lead)} {main} vs {acc(other)} for "
                f"{name(other)}{why}{chance}"
            )
        elif c < 0:
            parts.append(
                f"{where}, {name(other)} reaches {acc(other)} {main} vs {acc(lead)} for "
                f"{name(lead)}{why}{chance}"
            )
        else:
            parts.append(
                f"{where}, {name(lead)} ({acc(lead)} {main}) and {name(other)} ({acc(other)}) "
                + (  # type: ignore[arg-type]
                    f"are not distinguishable{why}"
                    if test
                    else f"are not distinguishable {_n_text(a, b)}"
                )
            )
        if base is not None and other is not base and lead is not base:
            parts[-1] += f", with the 0-shot baseline at {acc(base)}"
    if main == "clean" and lead.misleading is not None and lead.clean is not None:
        m = lead.misleading
        c = compare(m, lead.clean)
        who = "ICL" if lead.method == ICL else name(lead)
        if c < 0:
            text = f"on misleading items {who} drops to {fmt(m.accuracy)}"
        elif c > 0:
            text = f"on misleading items {who} rises to {fmt(m.accuracy)}"
        else:
            text = (
                f"on misleading items {who} scores {fmt(m.accuracy)} (not distinguishable "
                f"from clean {_n_text(m, lead.clean)})"
            )
        if m.conflict_shortcut_rate is not None:
            text += (
                f" and gives the shortcut answer on {_pct(m.conflict_shortcut_rate)} of the "
                "items where it is wrong"
            )
        elif m.shortcut_rate is not None:
            text += f" and answers the shortcut {_pct(m.shortcut_rate)} of the time"
        parts.append(text)
        if lead is icl and ft is not None and ft.misleading is not None:
            fm = ft.misleading
            test = paired((lead.method, lead.shots), (ft.method, ft.shots), "misleading")
            c2 = test.sign if test else compare(m, fm)
            rel = {
                1: "below ICL",
                -1: "above ICL",
                0: "not distinguishable from ICL" + ("" if test else f" {_n_text(m, fm)}"),
            }[c2]
            if test:
                rel += f"; {test.text()}"
            parts.append(f"{ft.label} scores {fmt(fm.accuracy)} there ({rel})")
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def sentences(data: RunData) -> list[tuple[str, str, str]]:
    """``(model, task, sentence)`` for every model and task of the run."""
    many = len(data.models) > 1

    def paired(model: str, task: str) -> Paired:
        def test(a: Setting, b: Setting, variant: str) -> Comparison | None:
            return data.comparison(model, task, variant, a, b)

        return test

    return [
        (m, t, sentence(headline(data, m, t), t, m if many else None, paired(m, t)))
        for m in data.models
        for t in data.tasks
        if any(c.model == m and c.task == t for c in data.cells.values())
    ]


CELL_COLUMNS = (
    "model",
    "task",
    "variant",
    "method",
    "shots",
    "shots_used",
    "step",
    "accuracy",
    "ci_low",
    "ci_high",
    "std",
    "min",
    "max",
    "n_seeds",
    "n",
    "substring_accuracy",
    "shortcut_rate",
    "shortcut_only_accuracy",
    "parse_failures",
    "well_formed_rate",
    "constant_answer",
    "constant_accuracy",
    "train_examples",
    "scoring",
)


def _num(x: float | int | None) -> str:
    if x is None:
        return ""
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def cell_values(c: Cell) -> list[Any]:
    """The values of :data:`CELL_COLUMNS` for one cell (typed; ``None`` where unknown)."""
    return [
        c.model, c.task, c.variant, c.method, c.shots, c.shots_used_mean, c.step,
        c.accuracy, c.low, c.high, c.std, c.acc_min, c.acc_max, c.n_seeds, c.n,
        c.substring_accuracy, c.shortcut_rate, c.shortcut_only_accuracy, c.parse_failures,
        c.well_formed_rate, c.constant_answer, c.constant_accuracy, c.train_examples, c.scoring,
    ]  # fmt: skip


def cell_record(c: Cell) -> list[str]:
    """A CSV row (:data:`CELL_COLUMNS`) for one cell."""
    v = cell_values(c)
    return [*v[:4], str(v[4])] + [_num(x) for x in v[5:-1]] + [v[-1] or ""]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with atomic_writer(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def write_tables(data: RunData, tables_dir: Path) -> dict[str, Path]:
    """Write ``headline.csv``, ``cells.csv`` (with each evaluated checkpoint's cells beside the
    final models') and (with fine-tuning) ``finetune.csv``."""
    out: dict[str, Path] = {}
    head_rows = []
    for m in data.models:
        for t in data.tasks:
            for e in headline(data, m, t):
                for c in (e.clean, e.misleading):
                    if c is not None:
                        head_rows.append([e.label, *cell_record(c)])
    out["headline"] = _write_csv(tables_dir / "headline.csv", ("entry", *CELL_COLUMNS), head_rows)
    cells = sorted(
        [*data.cells.values(), *data.checkpoints.values()],
        key=lambda c: (c.model, c.task, c.method, c.variant, c.shots, c.step or 0),
    )
    out["cells"] = _write_csv(
        tables_dir / "cells.csv", CELL_COLUMNS, [cell_record(c) for c in cells]
    )
    if data.finetune:
        rows = []
        for f in data.finetune:
            man = f.manifest
            timings = man.get("timings") if isinstance(man.get("timings"), dict) else {}
            rows.append(
                [
                    f.model,
                    f.method,
                    _num(man.get("steps") if isinstance(man.get("steps"), int) else None),
                    _num(f.examples_seen),
                    _num(
                        man.get("final_loss") if isinstance(man.get("final_loss"), float) else None
                    ),
                    _num(timings.get("train_seconds")),
                ]
            )
        header = ("model", "method", "steps", "examples_seen", "final_loss", "train_seconds")
        out["finetune"] = _write_csv(tables_dir / "finetune.csv", header, rows)
    return out
