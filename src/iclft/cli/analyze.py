"""``iclft analyze``: mechanistic analyses (circuits and circuit shift; ICL vs gradient descent)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from iclft.analysis.pipeline import N_SPLITS
from iclft.cli.eval import FORCE
from iclft.records import p_text
from iclft.stats import N_PERMUTATIONS

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


@app.command("circuits")
def circuits_command(
    model: str = typer.Option(
        None, "--model", "-m", help="Base model: alias, directory or hub id."
    ),
    ft_model: Path = typer.Option(
        None, "--ft-model", help="Directory of the fine-tuned model (adds the 'ft' setting)."
    ),
    task: str = typer.Option(
        ..., "--task", "-t", help="expression, boolean, parity, relation, code."
    ),
    shots: int = typer.Option(4, "--shots", "-k", help="Demonstrations in the ICL setting (>= 1)."),
    n: int = typer.Option(20, "-n", "--n", help="Clean/corrupt pairs."),
    method: str = typer.Option("attribution", "--method", help="exact or attribution."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of the pairs and the bootstrap."),
    positions: str = typer.Option("query", "--positions", help="query, last or all."),
    top_k: int = typer.Option(10, "--top-k", help="Circuit size (ignored with --share)."),
    share: float = typer.Option(
        None, "--share", help="Circuit = smallest set with this share of |effect|."
    ),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for intervals."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Patches per forward (exact)."),
    verify: int = typer.Option(
        None,
        "--verify",
        help="Attribution: re-measure its top N heads/MLPs by exact patching "
        "(default: twice the circuit size; 0: no check).",
    ),
    n_splits: int = typer.Option(
        N_SPLITS, "--splits", help="Random split-halves for each shift's noise floor (0: none)."
    ),
    n_perm: int = typer.Option(
        N_PERMUTATIONS,
        "--permutations",
        help="Permutations of each shift's test of 'no shift' (0: no test).",
    ),
    per_position: str = typer.Option(
        "",
        "--per-position",
        help="Also patch these kinds (resid, mlp; comma-separated) one position at a time "
        "(exact): positions_<setting>.png.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    output: Path = typer.Option(..., "-o", "--output", help="Output directory."),
    force: bool = FORCE,
) -> None:
    """Patch every head, MLP and residual stream in the base (0-shot), ICL (k-shot) and FT
    (0-shot, --ft-model) settings; write circuits.json, heat maps and manifest.json."""
    from rich.console import Console

    from iclft.analysis.pipeline import CircuitSpec, check_ft_model, run_circuits

    spec = CircuitSpec(
        task=task,
        shots=shots,
        n=n,
        method=method,
        seed=seed,
        positions=positions,
        top_k=top_k,
        share=share,
        n_boot=n_boot,
        batch_size=batch_size,
        verify=verify,
        n_splits=n_splits,
        n_perm=n_perm,
        per_position=tuple(k.strip() for k in per_position.split(",") if k.strip()),
    ).check()
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


@app.command("similarity")
def similarity_command(
    model: str = typer.Option(
        None, "--model", "-m", help="Base model: alias, directory or hub id."
    ),
    task: str = typer.Option(
        ..., "--task", "-t", help="expression, boolean, parity, relation, code."
    ),
    shots: int = typer.Option(
        8, "--shots", "-k", help="Demonstrations: the ICL prompt's and GD's training data (>= 1)."
    ),
    n: int = typer.Option(8, "-n", "--n", help="Test queries."),
    lr: str = typer.Option(
        "1e-3",
        "--lr",
        help="SGD learning rate of GD and layer-causal GD, or a comma-separated grid: each "
        "update then takes the grid value with the best held-out accuracy after the update.",
    ),
    heldout: int = typer.Option(
        16, "--heldout", help="With an lr grid: held-out queries that choose the lr."
    ),
    seed: int = typer.Option(
        0, "--seed", "-s", help="Seed of the queries, demonstrations and random update."
    ),
    keys: str = typer.Option(
        "reference",
        "--keys",
        help="SimAM's keys: reference (the query's own tokens, the reference's c_len "
        "boundary), query+separator (also the separator tokens before the query: iclft's "
        "earlier default) or instruction+query (BOS and instruction too).",
    ),
    random_draws: int = typer.Option(
        5, "--random-draws", help="Draws of each norm-matched random update (>= 1)."
    ),
    untrained: bool = typer.Option(
        True, "--untrained/--no-untrained", help="Also measure a randomly initialised model."
    ),
    n_boot: int = typer.Option(
        1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0: none)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    dtype: str = typer.Option(
        "float32",
        "--dtype",
        help="Evaluation dtype: float32 (default), bfloat16, float16 or auto. GD always runs in "
        "fp32; a half-precision model rounds small updates away (update_cast in the output).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Output directory."),
    force: bool = FORCE,
) -> None:
    """Compare ICL with gradient descent on the same k demonstrations (vanilla and layer-causal,
    K/V only) with controls (norm-matched random updates, Dai et al.'s uniform baseline, an
    untrained model): SimAOU, SimAOU_norm, SimAM, SimAM_Δ, Rec2FTP with 95% intervals; write
    similarity.json, similarity_per_layer.png and manifest.json."""
    from rich.console import Console

    from iclft.analysis.similarity import SimilaritySpec, controls_rows, parse_lr, run_similarity

    spec = SimilaritySpec(
        task=task, shots=shots, n=n, lr=parse_lr(lr), seed=seed, keys=keys,
        random_draws=random_draws, untrained=untrained, n_boot=n_boot, heldout=heldout,
    ).check()  # fmt: skip
    with _progress() as track:
        report = run_similarity(
            spec, output, model=model, device=device, dtype=dtype, track=track, force=force
        )
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
