"""Rendering the report as one self-contained HTML file (images as base64 data URIs, inline CSS,
no external resources) and as Markdown that links the PNGs under ``figures/``.

Both are built from the same list of :class:`Section` objects, so they say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclft.records import CONSTANT, ICL, format_p
from iclft.report.circuits import circuit_sentences
from iclft.report.data import Cell, RunData, fmt
from iclft.report.figures import FigureFile
from iclft.report.tables import headline, sentences

#: a table: caption, column names, rows of cell texts
Table = tuple[str, Sequence[str], Sequence[Sequence[str]]]


@dataclass
class Section:
    """A report section: paragraphs, tables and figures, in that order; or a skip note."""

    anchor: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureFile] = field(default_factory=list)
    code: str | None = None  # preformatted text (the resolved config)
    note: str | None = None  # why the section is empty


CIRCUITS_NOTE = (
    "Circuit shift is iclft's own definition (the seed paper released no code for it): the "
    "Jaccard distance between two settings' circuits (top heads and MLPs by |normalised "
    "patching effect|) and the cosine distance between their effect vectors, on the same "
    "clean/corrupt pairs. A distance is positive even without a shift, so its interval and its "
    "ratio to the split-half noise floor (the same distance between two disjoint random halves "
    "of the pairs under one setting) describe, and do not decide. 'Shifted' is decided by a "
    "paired permutation test of 1 - cos over all heads and MLPs: each pair's effects are "
    "swapped between the two settings at random, p = (1 + #{swapped distance >= observed}) / "
    "(1 + B) (exact enumeration when there are few pairs, where p cannot fall below 2 / 2^n). "
    "Whether ICL moves the circuit more than fine-tuning is a jackknife t test over pairs of "
    "the difference of the two debiased cosine distances from the base (the plain distance "
    "grows with a setting's noise; the debiased one does not). The summary decides on "
    "Holm-adjusted p-values over every circuit test of the run at 0.05. A setting whose "
    "clean-corrupt gap is not above 0 by a one-sided t test over pairs has no identified "
    "circuit, and no shift from or to it is reported or tested. Attribution patching is "
    "checked by re-measuring its top components with exact patching; residual streams are left "
    "out of circuits and heat maps (patched at every query position they restore the clean run "
    "by definition)."
)

SECTION_TITLES = {
    "shots": "1. Accuracy vs shots",
    "robustness": "2. Robustness: clean vs misleading",
    "curves": "3. Fine-tuning curves",
    "efficiency": "4. Data efficiency",
    "analysis": "5. Analysis",
}


def _cell_text(c: Cell | None) -> str:
    if c is None:
        return "–"
    text = c.interval_text()
    return text + f" sd {fmt(c.std)}" if c.n_seeds > 1 else text


def _spread(c: Cell | None) -> str:
    """``0.56–0.81 (5 sets)``: the range of a cell's demonstration sets' accuracies."""
    if c is None or c.set_min is None or c.set_max is None:
        return "–"
    return f"{fmt(c.set_min)}–{fmt(c.set_max)} ({c.demo_sets} sets)"


def _constant(c: Cell | None) -> str:
    """``0.52 ("True")``: the constant answer's accuracy on a cell's items, and the answer."""
    if c is None or c.constant_accuracy is None:
        return "–"
    return fmt(c.constant_accuracy) + (f' ("{c.constant_answer}")' if c.constant_answer else "")


def headline_tables(data: RunData) -> list[Table]:
    """One headline table per model: baseline / best ICL / each FT, clean and misleading."""
    cols = (
        "task",
        "setting",
        "clean accuracy [95%]",
        "misleading accuracy [95%]",
        "shortcut rate (misleading)",
        "substring acc. (clean / misl.)",
        "set spread (clean / misl.)",
        "constant answer (clean / misl.)",
        "well-formed (clean / misl.)",
        "n",
        "seeds",
    )
    out = []
    for model in data.models:
        rows = []
        for task in data.tasks:
            for e in headline(data, model, task):
                c, m = e.clean, e.misleading
                subs = " / ".join(fmt(x.substring_accuracy) if x else "–" for x in (c, m))
                spread = " / ".join(_spread(x) for x in (c, m))
                chance = " / ".join(_constant(x) for x in (c, m))
                formed = " / ".join(fmt(x.well_formed_rate) if x else "–" for x in (c, m))
                n = next((x.n for x in (c, m) if x is not None and x.n is not None), None)
                seeds = max(x.n_seeds for x in (c, m) if x is not None)
                rows.append(
                    [
                        task,
                        e.label,
                        _cell_text(c),
                        _cell_text(m),
                        fmt(m.shortcut_rate) if m else "–",
                        subs,
                        spread,
                        chance,
                        formed,
                        "–" if n is None else str(n),
                        str(seeds),
                    ]
                )
        if rows:
            out.append((f"Headline: {model}", cols, rows))
    return out


def checkpoint_tables(data: RunData) -> list[Table]:
    """Per model with evaluated checkpoints: each fine-tuning method's 0-shot accuracy at every
    evaluated step (its checkpoints, then the final model of the headline)."""
    cols = ("task", "setting", "step", "task examples", "clean accuracy [95%]",
            "misleading accuracy [95%]", "n")  # fmt: skip
    out = []
    for model in data.models:
        rows = []
        for task in data.tasks:
            for method in data.ft_methods(model):
                by_step: dict[int, dict[str, Cell]] = {}
                for variant in ("clean", "misleading"):
                    final = data.cell(model, task, variant, method)
                    for c in [*data.checkpoint_cells(model, task, variant, method), final]:
                        if c is not None and c.step is not None:
                            by_step.setdefault(c.step, {})[variant] = c
                if len(by_step) < 2:
                    continue
                for step, got in sorted(by_step.items()):
                    c = next(iter(got.values()))
                    label = method + (" (final)" if step == max(by_step) else "")
                    examples = "–" if c.train_examples is None else str(c.train_examples)
                    clean, mis = _cell_text(got.get("clean")), _cell_text(got.get("misleading"))
                    n = "–" if c.n is None else str(c.n)
                    rows.append([task, label, str(step), examples, clean, mis, n])
        if rows:
            out.append((f"Fine-tuned models at each evaluated step: {model}", cols, rows))
    return out


def _flat(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value)`` for the scalars of a nested mapping (lists shown as JSON)."""
    out = []
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flat(v, key + ".")
        elif isinstance(v, list):
            out.append((key, json.dumps(v, default=str)[:200]))
        else:
            out.append((key, "–" if v is None else str(v)))
    return out


def run_info(data: RunData) -> Section:
    """Config, versions, timings and device from ``config.json`` and ``manifest.json``."""
    s = Section("run", "Run information")
    man = data.manifest
    if not man:
        s.paragraphs.append("No manifest.json in the run directory: versions and timings unknown.")
    else:
        top = [(k, str(v)) for k, v in man.items() if not isinstance(v, (Mapping, list))]
        if isinstance(man.get("device"), Mapping):
            top += [(f"device.{k}", v) for k, v in _flat(man["device"])]
        if top:
            s.tables.append(("Versions and host", ("field", "value"), top))
        if isinstance(man.get("packages"), Mapping):
            pk = [(k, "–" if v is None else str(v)) for k, v in man["packages"].items()]
            s.tables.append(("Packages", ("package", "version"), pk))
        if isinstance(man.get("timings"), Mapping):
            s.tables.append(("Timings", ("stage", "seconds"), _flat(man["timings"])))
    seeds = sorted({r.seed for r in data.rows})
    s.paragraphs.append(
        f"{len(data.rows)} result rows, {len(data.cells)} cells, "
        f"seeds {', '.join(map(str, seeds))}; "
        f"models: {', '.join(data.models)}; tasks: {', '.join(data.tasks)}; "
        f"methods: {', '.join(data.methods)}."
    )
    if data.config:
        s.code = json.dumps(data.config, indent=2, default=str)
    else:
        s.paragraphs.append("No config.json in the run directory.")
    return s


def comparisons_section(data: RunData) -> Section:
    """Paired tests of the headline settings (same items): ICL vs baseline and each fine-tuned
    model, and each fine-tuned model vs baseline; every shot count is in comparisons.jsonl."""
    s = Section("comparisons", "Paired comparisons")
    if not data.comparisons:
        s.note = "This run has no paired comparisons (comparisons.jsonl is written by iclft run)."
        return s
    s.paragraphs.append(
        "Settings scored on the same test items, compared item by item: the difference in "
        "accuracy (A - B), its 95% interval and the two-sided p-value of one test, the interval "
        "being the differences the test does not reject (so it excludes 0 exactly when p < "
        "0.05). With one demonstration set per side the test is the paired t test on items "
        "(asymptotically McNemar; the exact McNemar p is in comparisons.jsonl as p_mcnemar). "
        "Where a side was evaluated over several demonstration sets, its score on an item is "
        "the mean over the sets and the test is the crossed-design t: the variance of the "
        "difference is an item part plus each side's set part (a two-way ANOVA of its sets × "
        "items table), each with the t quantile of its own degrees of freedom (Banerjee's "
        "rule), so a few sets widen the interval as much as they should. Each ICL shot count "
        "and fine-tuned model is also compared with the constant answer (always giving the "
        "answer right on most of these items). p-values are adjusted by Holm's method over "
        "every comparison of the run (the 'adjusted p' column); the summary's sentences decide "
        "on the adjusted p at 0.05. ICL is shown at the headline's k; comparisons.jsonl holds "
        "every shot count."
    )
    cols = ("task", "variant", "A vs B", "diff [95% CI]", "A only / B only", "test", "p",
            "adjusted p", "n")  # fmt: skip
    for model in data.models:
        rows = []
        for task in data.tasks:
            entries = headline(data, model, task)
            icl = [e for e in entries if e.method == ICL]
            keep = {(ICL, e.shots) for e in icl} | {(e.method, 0) for e in entries}
            keep.add((CONSTANT, 0))
            for c in data.comparisons:
                a, b = (c.a_method, c.a_shots), (c.b_method, c.b_shots)
                if (c.model, c.task) != (model, task) or a not in keep or b not in keep:
                    continue
                rows.append(
                    (
                        task,
                        c.variant,
                        f"{_setting_name(*a)} vs {_setting_name(*b)}",
                        f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]",
                        f"{c.a_only} / {c.b_only}",
                        c.name,
                        format_p(c.p_value),
                        "–" if c.p_adjusted is None else format_p(c.p_adjusted),
                        str(c.n),
                    )
                )
        if rows:
            s.tables.append((f"paired comparisons: {model}", cols, rows))
    return s


def _setting_name(method: str, shots: int) -> str:
    if method == ICL:
        return f"ICL (k={shots})"
    return "constant answer" if method == CONSTANT else method


def scoring_section(data: RunData) -> Section:
    """How accuracy was scored, with the lenient substring figure explained."""
    modes = sorted({r.scoring for r in data.rows if r.scoring})
    has_sub = any(r.substring_accuracy is not None for r in data.rows)
    s = Section("scoring", "Scoring")
    s.paragraphs.append(
        "Accuracy is exact match: the answer parsed from the model's output (or the chosen "
        "candidate, with log-likelihood scoring) must equal the target. The paper's authors scored "
        "with a substring test (the target appears anywhere in the generated text), which counts "
        "'2' as found in '12'; that lenient figure is shown beside exact match in the headline "
        "table ('substring acc.') and in tables/cells.csv."
        + ("" if has_sub else " This run's results carry no substring figure.")
    )
    protocol = data.config.get("protocol", "exact")
    s.paragraphs.append(
        f"Scoring modes in this run: {', '.join(modes) if modes else 'not recorded'}; protocol "
        + (
            "paper: the seed code's per-task token budget (1-3 tokens) with no stop, correct "
            "when the target occurs anywhere in it or is parsed from it (accuracy is then the "
            "lenient figure)."
            if protocol == "paper"
            else "exact: leading whitespace and newlines are skipped, generation stops at the "
            "next newline, and the first non-empty line is parsed."
        )
        + " Intervals are 95% Wilson score intervals over items with one demonstration set, "
        "and with several (demo_sets) the crossed-design t interval on the logit scale: the "
        "variance of the accuracy is an item part plus a demonstration-set part (two-way "
        "ANOVA of the sets × items table), each with the t quantile of its own degrees of "
        "freedom, so the interval includes how much the result depends on which "
        "demonstrations were drawn; with several seeds, the pooled interval widened to cover "
        "every seed's accuracy. Sentences compare settings scored on the same items by their "
        "paired test, deciding on its Holm-adjusted p-value (see Paired comparisons), and "
        "other pairs (clean vs misleading, or runs without paired tests) only when their "
        "intervals do not overlap. A sentence that says ICL or fine-tuning wins also says "
        "whether it beats the constant answer on the same items."
    )
    if data.manifest.get("command") == "rescore":
        gen = data.manifest.get("outputs_generated_with") or {}
        note = data.manifest.get("note")
        s.paragraphs.append(
            f"Rescored without the model (iclft rescore) from {data.manifest.get('source')}: "
            f"the saved outputs, generated under protocol {gen.get('protocol', 'unknown')} "
            f"(stop: {gen.get('stop', 'unknown')}), judged again under protocol {protocol}"
            + (f"; {note}." if note else ".")
        )
    return s


def build_sections(
    data: RunData, figures: Sequence[FigureFile], notes: Mapping[str, str]
) -> list[Section]:
    """All sections in report order; ``notes`` holds the skip note of figure sections."""
    summary = Section("summary", "Summary")
    summary.bullets = [s for _, _, s in sentences(data)]
    summary.bullets += [s for _, _, s in circuit_sentences(data)]
    head = Section("headline", "Headline table")
    head.paragraphs.append(
        "Per model and task: the 0-shot baseline; ICL at the k with the best clean accuracy on "
        "held-out items (items the table never reports, so the choice does not flatter it; in "
        "runs without held-out items the choice is made on the test items and labelled so) and "
        "at a k fixed in advance (the config's fixed_shots, else the largest k); and each "
        "fine-tuned model evaluated 0-shot. Accuracy is exact match with its 95% interval (mean "
        "over seeds and their standard deviation, sd, when there are several); with several "
        "demonstration sets, the interval is the crossed-design t interval over sets and items "
        "and 'set spread' the range of the sets' accuracies; n is the number of test items per "
        "seed; the shortcut rate is the share of misleading items answered with the shortcut's "
        "answer. 'Constant answer' is the chance reference: the accuracy of always giving the "
        "answer right on most of these items (a choice task's majority label), with that "
        "answer; 'well-formed' is the share of outputs that parse to a valid answer of the "
        "task."
    )
    head.tables = headline_tables(data)
    steps = checkpoint_tables(data)
    if steps:
        head.paragraphs.append(
            "Fine-tuned models enter the headline (and the summary, the robustness figure and "
            "the horizontal lines of accuracy vs shots) as their final model, a choice fixed "
            "before any test item is seen. The checkpoints the config's eval_checkpoints lists "
            "(the paper's authors report step 100 of 300) were evaluated on the same test "
            "items; their accuracies follow, beside the final model's."
        )
        head.tables += steps
    out = [summary, head, comparisons_section(data)]
    for key, title in SECTION_TITLES.items():
        sec = Section(key, title, figures=[f for f in figures if f.section == key])
        if not sec.figures:
            sec.note = notes.get(key, "Nothing to show for this run.")
        if key == "analysis":
            for a in data.analysis_summaries:
                sec.tables.append((a.relpath, a.columns, a.rows))
            if any(a.kind == "circuit-shift" for a in data.analysis_summaries):
                sec.paragraphs.append(CIRCUITS_NOTE)
            if sec.tables and not sec.figures:
                sec.note = None
        out.append(sec)
    out += [scoring_section(data), run_info(data)]
    if data.notes:
        out.append(Section("notes", "Reading notes", bullets=list(data.notes)))
    return out


CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;
color:#1b1b1b;background:#fff;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:1.8em;margin:0 0 4px}h2{border-bottom:2px solid #0072B2;padding-bottom:3px;
margin-top:2em}.meta{color:#555;margin:0 0 1em}
nav ol{columns:2;margin:0;padding-left:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.92em}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef4fa}tr:nth-child(even) td{background:#fafafa}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#333;font-size:.92em;margin-top:4px}
.note{background:#fff7e0;border-left:4px solid #E69F00;padding:6px 10px}
ul.summary li{margin-bottom:.5em}
pre{background:#f5f5f5;padding:10px;overflow:auto;font-size:.85em;max-height:420px}
footer{color:#666;font-size:.85em;margin-top:3em}
"""

# Counts the images that loaded (naturalWidth > 0) once the page is loaded and writes the
# result as JSON into #img-check: a check the browser test reads back; harmless to readers.
IMG_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var el = document.getElementById('img-check');
  el.textContent = JSON.stringify({total: imgs.length, loaded: ok,
                                   tables: document.querySelectorAll('table').length});
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(t: Table) -> str:
    caption, cols, rows = t
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def render_html(data: RunData, sections: Sequence[Section]) -> str:
    """The report as one HTML document with every image embedded."""
    version = data.manifest.get("iclft_version", "unknown")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>iclft report: {_e(data.run_dir.name)}</title><style>{CSS}</style></head>",
        "<body><main>",
        "<h1>ICL vs fine-tuning on implicit patterns</h1>",
        f'<p class="meta">Run directory <code>{_e(data.run_dir)}</code> · iclft {_e(version)} · '
        f"report written {_e(time.strftime('%Y-%m-%d %H:%M'))}</p>",
        "<nav><strong>Contents</strong><ol>"
        + "".join(f'<li><a href="#{s.anchor}">{_e(s.title)}</a></li>' for s in sections)
        + "</ol></nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{_e(s.title)}</h2>')
        if s.note:
            parts.append(f'<p class="note">{_e(s.note)}</p>')
        parts += [f"<p>{_e(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            cls = ' class="summary"' if s.anchor == "summary" else ""
            parts.append(f"<ul{cls}>" + "".join(f"<li>{_e(b)}</li>" for b in s.bullets) + "</ul>")
        parts += [_html_table(t) for t in s.tables]
        for f in s.figures:
            parts.append(
                f'<figure><img src="{_data_uri(f.path)}" alt="{_e(f.caption)}">'
                f"<figcaption>{_e(f.caption)}</figcaption></figure>"
            )
        if s.code:
            parts.append(
                f"<details open><summary>config.json</summary><pre>{_e(s.code)}</pre></details>"
            )
        parts.append("</section>")
    parts += [
        "<footer>Tables as CSV in <code>tables/</code>, figures as PNG in <code>figures/</code>. "
        'Image check: <span id="img-check">not run (scripts disabled)</span></footer>',
        f"</main><script>{IMG_CHECK_JS}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    caption, cols, rows = t
    lines = [f"**{_md(caption)}**", "", "| " + " | ".join(_md(c) for c in cols) + " |"]
    lines.append("|" + "---|" * len(cols))
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(data: RunData, sections: Sequence[Section], base: Path) -> str:
    """The report as Markdown; images are linked relative to ``base`` (the run directory)."""
    version = data.manifest.get("iclft_version", "unknown")
    out = [
        "# ICL vs fine-tuning on implicit patterns",
        "",
        f"Run directory `{data.run_dir}` · iclft {version} · report written "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.note:
            out += [f"> {s.note}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.bullets:
            out += [f"- {b}" for b in s.bullets] + [""]
        out += [_md_table(t) for t in s.tables]
        for f in s.figures:
            rel = f.path.relative_to(base).as_posix()
            out += [f"![{f.path.stem}]({rel})", "", f"*{f.caption}*", ""]
        if s.code:
            out += ["```json", s.code, "```", ""]
    return "\n".join(out)
