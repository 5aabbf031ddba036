"""``iclft analyze``: mechanistic analyses (circuits and circuit shift; ICL vs gradient descent)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from iclft.cli.eval import FORCE
from iclft.records import p_text

app = typer.Typer(
    help="Mechanistic analyses: circuits and circuit shift; ICL vs gradient descent.",
    no_args_is_help=True,
)


@contextmanager
def _progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yields ``track(description, total) -> advance`` over :func:`iclft.logs.progress`."""
    from iclft.logs import progress

    with progress() as shown:
        yield lambda description, total: shown.task(description, total).advance


#: flags of settings whose option is not --field-name (the circuits' on top of the shared ones)
SIMILARITY_FLAGS = {
    "task": ["--task", "-t"],
    "seed": ["--seed", "-s"],
    "shots": ["--shots", "-k"],
    "n": ["-n", "--n"],
    "n_boot": ["--bootstrap"],
}
CIRCUIT_FLAGS = {
    **SIMILARITY_FLAGS,
    "batch_size": ["--batch-size", "-b"],
    "n_splits": ["--splits"],
    "n_perm": ["--permutations"],
}


def _spec(model, flags, settings: dict):
    from iclft.cli.fields import flag_names, given_values
    from iclft.validation import build

    return build(model, given_values(model, settings), flag_names(model, flags))


def circuits_command(
    model: str = typer.Option(
        None, "--model", "-m", help="Base model: alias, directory or hub id."
    ),
    ft_model: Path = typer.Option(
        None, "--ft-model", help="Directory of the fine-tuned model (adds the 'ft' setting)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    output: Path = typer.Option(..., "-o", "--output", help="Output directory."),
    force: bool = FORCE,
    **settings,
) -> None:
    """Patch every head, MLP and residual stream in the base (0-shot), ICL (k-shot) and FT
    (0-shot, --ft-model) settings; write circuits.json, heat maps and manifest.json."""
    from rich.console import Console

    from iclft.analysis.pipeline import check_ft_model, run_circuits
    from iclft.analysis.settings import CircuitSpec

    spec = _spec(CircuitSpec, CIRCUIT_FLAGS, settings)
    check_ft_model(ft_model)
    with _progress() as track:
        report = run_circuits(
            spec, output, model=model, ft_model=ft_model, device=device, dtype=dtype,
            track=track, force=force,
        )  # fmt: skip
    out = Console()
    for name, s in report.settings.items():
        g = s["gap_check"]
        mark = "" if s["identified"] else "  NOT IDENTIFIED"
        out.print(
            f"{name:>4}: gap {g['gap_mean']} [{g['gap_ci_low']}, {g['gap_ci_high']}]{mark}; "
            f"circuit {', '.join(s['circuit'])}"
        )
        if s["attribution_check"]:
            a, r = s["attribution_check"], s["attribution_check"]["spearman"]
            out.print(
                f"      attribution vs exact on its top {a['n_remeasured']}: Spearman "
                f"{r['value']} [{r['ci_low']}, {r['ci_high']}], top-{a['top_k']} overlap "
                f"{a['top_k_overlap']}/{a['top_k']}, exact/attribution "
                f"{a['exact_over_attribution_top_k']}"
            )
    for sh in report.shifts:
        if sh["status"] != "identified":
            out.print(
                f"shift {sh['from']} -> {sh['to']}: not identified "
                f"({', '.join(sh['not_identified'])})"
            )
            continue
        j, c, f = sh["jaccard_distance"], sh["cosine_distance"], sh["noise_floor"]
        fj = f["all"]["jaccard_distance"] if f else None
        fc = f["all"]["cosine_distance"] if f else None
        out.print(
            f"shift {sh['from']} -> {sh['to']}: "
            f"jaccard {j['value']} [{j['ci_low']}, {j['ci_high']}]"
            + (f" (floor {fj['floor']['value']}, x{fj['shift_over_floor']})" if fj else "")
            + f", 1-cos {c['value']} [{c['ci_low']}, {c['ci_high']}]"
            + (f" (floor {fc['floor']['value']}, x{fc['shift_over_floor']})" if fc else "")
        )
        t = sh.get("test")
        if t:
            verdict = "shifted" if t.get("shifted") else "not shifted"
            out.print(
                f"      {verdict}: {p_text(t['p_value'], 'permutation p')}, "
                f"{p_text(t.get('p_holm'), 'Holm p')} "
                f"(family of {t.get('holm_family')})"
            )
    cmp_ = report.shift_comparison
    if cmp_:
        if cmp_.get("p_value") is None:
            out.print(f"ICL shift vs FT shift: not tested ({cmp_.get('reason')})")
        else:
            larger = cmp_.get("larger")
            verdict = f"{larger} moves the circuit more" if larger else "not distinguishable"
            out.print(
                f"ICL shift vs FT shift: {verdict}: D = {cmp_['diff']} "
                f"[{cmp_['ci_low']}, {cmp_['ci_high']}], "
                f"{p_text(cmp_['p_value'], 'jackknife t p')}, "
                f"{p_text(cmp_.get('p_holm'), 'Holm p')}"
            )
    out.print(f"wrote {output / 'circuits.json'}")


def similarity_command(
    model: str = typer.Option(
        None, "--model", "-m", help="Base model: alias, directory or hub id."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    output: Path = typer.Option(..., "-o", "--output", help="Output directory."),
    force: bool = FORCE,
    **settings,
) -> None:
    """Compare ICL with gradient descent on the same k demonstrations (vanilla and layer-causal,
    K/V only) with controls (norm-matched random updates, Dai et al.'s uniform baseline, an
    untrained model): SimAOU, SimAOU_norm, SimAM, SimAM_Δ, Rec2FTP with 95% intervals; write
    similarity.json, similarity_per_layer.png and manifest.json."""
    from rich.console import Console

    from iclft.analysis.settings import SimilaritySpec
    from iclft.analysis.similarity import run_similarity
    from iclft.analysis.similarity_table import controls_rows

    spec = _spec(SimilaritySpec, SIMILARITY_FLAGS, settings)
    task = spec.task
    with _progress() as track:
        report = run_similarity(spec, output, model=model, device=device, track=track, force=force)
    columns, rows = controls_rows(report)
    out = Console()
    out.print(
        f"{task}: ICL vs FT, {report.n_queries} queries, mean over layers [95% CI over "
        "queries]; random controls: mean over draws ±sd"
    )
    for row in rows:
        cells = ", ".join(f"{c} {v}" for c, v in zip(columns[2:], row[2:]) if v != "–")
        out.print(f"{row[0]} {row[1]}: {cells}")
    chosen = report.lr["chosen"]
    if len(report.lr["grid"]) > 1:
        out.print("learning rate chosen on held-out queries: "
                  + ", ".join(f"{u} {v:g}" for u, v in chosen.items()))  # fmt: skip
    acc = report.accuracy
    out.print("accuracy: " + ", ".join(f"{k} {_fmt(v['value'])}" for k, v in acc.items()))
    out.print(f"wrote {output / 'similarity.json'}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _register() -> None:
    from iclft.analysis.settings import CircuitSpec, SimilaritySpec
    from iclft.cli.fields import with_field_options

    app.command("circuits")(with_field_options(circuits_command, CircuitSpec, CIRCUIT_FLAGS))
    app.command("similarity")(
        with_field_options(similarity_command, SimilaritySpec, SIMILARITY_FLAGS)
    )


_register()
