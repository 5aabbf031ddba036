"""The report's circuit sentences: one per model and task with a circuits analysis, each
decision taken by the test written into ``circuits.json`` and named with its raw and its
Holm-adjusted p-value.

The Holm family is every circuit test of the run (each identified shift's permutation test and
each comparison of ICL's shift with fine-tuning's, over all models and tasks), so a sentence's
decision holds for the run as a whole; an analysis's own ``p_holm`` (its family: that one
file's tests) is not used here. How the tests are made: :mod:`iclft.analysis.circuits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from iclft.layout import model_slug
from iclft.records import CircuitsResult, format_p, p_text
from iclft.report.data import RunData
from iclft.stats import ALPHA, holm

#: the shifts a sentence speaks of, in its order, and how it names each
SHIFT_NAMES = {
    ("base", "icl"): "from the 0-shot base to ICL",
    ("base", "ft"): "from the 0-shot base to fine-tuning",
    ("icl", "ft"): "between ICL and fine-tuning",
}
SETTING_NAMES = {"base": "0-shot base", "icl": "ICL", "ft": "fine-tuned"}


@dataclass(frozen=True)
class CircuitAnalysis:
    """One ``circuits.json`` of the run, with the model it belongs to."""

    model: str
    task: str
    relpath: str
    result: CircuitsResult


def _model_of(relpath: str, res: CircuitsResult, models: list[str]) -> str:
    """The run's model a circuits.json belongs to: its recorded model when the run has it,
    else the one whose slug names its directory (``analysis/<slug>/circuits/<task>``), else
    the run's only model."""
    for key in ("spec", "alias"):
        if res.model.get(key) in models:
            return str(res.model[key])
    parts = PurePosixPath(relpath).parts
    if len(parts) >= 4 and parts[2] == "circuits":
        for m in models:
            if model_slug(m) == parts[1]:
                return m
    if len(models) == 1:
        return models[0]
    return str(res.model.get("alias") or res.model.get("spec") or "unknown model")


def circuit_analyses(data: RunData) -> list[CircuitAnalysis]:
    """The run's circuits analyses, in the run's model order, then task order."""
    out = []
    for rel, res in data.circuits:
        out.append(CircuitAnalysis(_model_of(rel, res, data.models), res.task or "?", rel, res))
    order = {m: i for i, m in enumerate(data.models)}
    tasks = {t: i for i, t in enumerate(data.tasks)}
    return sorted(out, key=lambda a: (order.get(a.model, 99), tasks.get(a.task, 99), a.relpath))


def _tests(res: CircuitsResult) -> list[dict[str, Any]]:
    """The tests of one analysis that enter the run's family (with a p-value)."""
    out = [
        sh["test"]
        for sh in res.shifts
        if sh.get("status") == "identified"
        and isinstance(sh.get("test"), Mapping)
        and sh["test"].get("p_value") is not None
    ]
    cmp_ = res.shift_comparison
    if cmp_ and cmp_.get("p_value") is not None:
        out.append(cmp_)
    return out


def run_holm(analyses: list[CircuitAnalysis]) -> tuple[dict[int, float], int]:
    """Holm over every circuit test of the run: ``{id(test dict): adjusted p}`` and the
    family's size."""
    tests = [t for a in analyses for t in _tests(a.result)]
    adjusted = holm([float(t["p_value"]) for t in tests])
    return {id(t): float(p) for t, p in zip(tests, adjusted) if p is not None}, len(tests)


def _shift_text(sh: Mapping[str, Any], label: str, adj: dict[int, float]) -> str:
    if sh.get("status") != "identified":
        who = ", ".join(SETTING_NAMES.get(s, s) for s in sh.get("not_identified") or [])
        return (
            f"{label}: not tested (the {who} circuit is not identified: its clean-corrupt gap "
            "is not above 0 by the one-sided t test)"
        )
    t = sh.get("test")
    if not isinstance(t, Mapping) or t.get("p_value") is None:
        return f"{label}: not tested (this circuits.json has no permutation test)"
    g = t.get("groups", {}).get("all", {})
    p, q = float(t["p_value"]), adj.get(id(t))
    what = (
        f"1 - cos {g.get('statistic', float('nan')):.2f} vs {g.get('null_mean', float('nan')):.2f}"
        f" expected without a shift; {p_text(p, 'permutation p')}, {p_text(q, 'Holm p')}"
    )
    if t.get("exact") and t.get("n_pairs"):
        floor = 2 / 2 ** int(t["n_pairs"])
        if floor >= ALPHA:
            what += f"; with {t['n_pairs']} pairs no p falls below {format_p(floor)}"
    verdict = "the circuit shifts" if q is not None and q < ALPHA else "no shift is shown"
    return f"{label}, {verdict} ({what})"


def _comparison_text(c: Mapping[str, Any] | None, adj: dict[int, float]) -> str | None:
    if not c:
        return None
    if c.get("p_value") is None:
        return f"ICL's shift against fine-tuning's: not tested ({c.get('reason') or 'no test'})"
    d = c.get("debiased_cosine_distance") or {}
    a, b = c.get("a", "icl"), c.get("b", "ft")
    p, q = float(c["p_value"]), adj.get(id(c))
    what = (
        f"debiased 1 - cos from base {d.get(a, float('nan')):.2f} vs "
        f"{d.get(b, float('nan')):.2f}; {p_text(p, 'jackknife t p')}, {p_text(q, 'Holm p')}"
    )
    names = {"icl": "ICL's", "ft": "fine-tuning's"}
    if q is not None and q < ALPHA and c.get("diff"):
        big, small = (a, b) if c["diff"] > 0 else (b, a)
        return f"{names.get(big, big)} shift is larger than {names.get(small, small)} ({what})"
    return f"ICL's and fine-tuning's shifts are not distinguishable ({what})"


def circuit_sentences(data: RunData) -> list[tuple[str, str, str]]:
    """``(model, task, sentence)`` for every circuits analysis of the run."""
    analyses = circuit_analyses(data)
    adj, family = run_holm(analyses)
    many = len(data.models) > 1
    out = []
    for an in analyses:
        res = an.result
        shifts = {(s.get("from"), s.get("to")): s for s in res.shifts}
        parts = [_shift_text(shifts[k], label, adj) for k, label in SHIFT_NAMES.items()
                 if k in shifts]  # fmt: skip
        cmp_ = _comparison_text(res.shift_comparison, adj)
        if cmp_:
            parts.append(cmp_)
        icl = res.settings.get("icl", {})
        where = f"Circuits on {an.task}" + (f" ({an.model})" if many else "")
        head = f"{where}, {res.n_pairs} pairs, ICL with k={icl.get('shots', '?')}"
        tail = (
            f"Holm over the run's {family} circuit tests, decided at {ALPHA:g}"
            if family
            else "no circuit test could be made"
        )
        out.append((an.model, an.task, f"{head}: " + "; ".join(parts) + f". {tail}."))
    return out
