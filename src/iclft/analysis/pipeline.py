"""``iclft analyze circuits`` as a library call: patch every head, MLP and residual stream in
three settings, find circuits, measure circuit shift, write ``circuits.json``, heat maps and
the manifest.

Settings (all on the same clean/corrupt pairs):

* ``base``: the base model, zero-shot (instruction + query);
* ``icl``: the base model with ``shots`` demonstrations (effects on the query's own tokens);
* ``ft``: the fine-tuned model (``ft_model``, any spec :func:`iclft.models.load_model` takes),
  zero-shot.

Each setting gets the gap guard (is its circuit identified?) and, with attribution patching,
an exact re-measure of the ``verify`` components attribution ranked highest; each shift gets
its split-half noise floor and the permutation test of "no shift", and with a fine-tuned model
ICL's shift is compared with fine-tuning's (see :mod:`iclft.analysis.circuits`). The tests of
one analysis are one Holm family: each carries its raw and its Holm-adjusted p-value, and a
decision at :data:`iclft.stats.ALPHA` on the adjusted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iclft.analysis.settings import CircuitSpec
from iclft.errors import UserError
from iclft.records import CircuitsResult

Track = Callable[[str, int], Callable[[int], None]]
"""``track(description, total)`` returns an ``advance(n)`` callback (a progress bar)."""


def _no_track(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def check_ft_model(ft_model: str | Path | None) -> None:
    """A fine-tuned model given as a directory must exist (checked before loading anything)."""
    if ft_model is None:
        return
    p = Path(ft_model).expanduser()
    if not p.is_dir():
        raise UserError(
            f"--ft-model {str(ft_model)!r} is not a directory (a saved model or adapter)"
        )


def _settings(spec: CircuitSpec, has_ft: bool) -> dict[str, tuple[str, int]]:
    """setting -> (which model, shots)."""
    out = {"base": ("base", 0), "icl": ("base", spec.shots)}
    if has_ft:
        out["ft"] = ("ft", 0)
    return out


def run_circuits(
    spec: CircuitSpec,
    out_dir: Path,
    *,
    model: str | None = None,
    ft_model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    track: Track = _no_track,
    loaded: dict[str, Any] | None = None,
    force: bool = False,
) -> CircuitsResult:
    """``iclft analyze circuits``: load the models (``loaded`` may hold already loaded
    ``LoadedModel`` objects under ``base``/``ft``: tests, the runner), :func:`find_circuits`,
    then :func:`write_circuits` into ``out_dir``; returns the record. ``out_dir`` is new, empty
    or an earlier circuits output (replaced whole); another's is refused unless ``force``
    (:func:`iclft.store.claim_output_dir`)."""
    from iclft.models import load_model
    from iclft.store import claim_output_dir

    check_ft_model(ft_model)
    claim = claim_output_dir(Path(out_dir), "analyze circuits", force=force)
    out_dir = claim.path
    started = time.time()
    t0 = time.time()
    models = dict(loaded or {})
    if "base" not in models:
        models["base"] = load_model(model, device=device, dtype=dtype)
    if ft_model is not None and "ft" not in models:
        models["ft"] = load_model(str(ft_model), device=device, dtype=dtype)
    timings = {"load_s": round(time.time() - t0, 3)}
    report, found = find_circuits(spec, models, track)
    timings.update(found)
    if claim.state == "own":  # an earlier analysis here: replaced whole
        claim.clear()
    write_circuits(report, out_dir, started=started, timings=timings, base=models["base"])
    return report


def find_circuits(
    spec: CircuitSpec, models: dict[str, Any], track: Track = _no_track
) -> tuple[CircuitsResult, dict[str, float]]:
    """The circuits of every setting (base, ICL, fine-tuned when ``models`` has ``ft``) and
    the shifts between them, from loaded models; returns the record and the seconds each
    setting took. Writes nothing (:func:`write_circuits` does)."""
    from iclft.analysis.circuits import EffectTable
    from iclft.faults import kill_point
    from iclft.models.anatomy import anatomy

    timings: dict[str, float] = {}
    settings = _settings(spec, "ft" in models)
    anats = {k: anatomy(lm.model) for k, lm in models.items()}
    shapes = {(a.n_layers, a.n_heads) for a in anats.values()}
    if len(shapes) != 1:
        raise UserError(f"the base and fine-tuned models differ in shape (layers, heads): {shapes}")

    t0 = time.time()
    chosen, tokens, skipped = _usable_pairs(spec, settings, models)
    timings["pairs_s"] = round(time.time() - t0, 3)

    tables: dict[str, EffectTable] = {}
    results: dict[str, Any] = {}
    gaps: dict[str, Any] = {}
    # the attribution check draws from its own stream, so the shift bootstrap (rng below) is
    # the same whether or not it runs
    check_rng = np.random.default_rng([spec.seed, 2])
    for name, (which, shots) in settings.items():
        t0 = time.time()
        pairs = [tokens[name][pid] for pid in chosen]
        tables[name], gaps[name], results[name] = _setting_circuit(
            spec, name, anats[which], pairs, check_rng, track
        )
        results[name] = {"model": which, "shots": shots, **results[name]}
        timings[f"{name}_s"] = round(time.time() - t0, 3)
        if spec.per_position:
            results[name]["per_position"] = _per_position(
                spec, name, anats[which], models[which].tokenizer, pairs, track
            )
            timings[f"{name}_s"] = round(time.time() - t0, 3)
        kill_point(f"circuits:{name}")

    shifts, comparison = _shifts(spec, tables, gaps)
    decide(shifts, comparison)
    an = anats["base"]
    report = CircuitsResult(
        task=spec.task,
        spec=spec.model_dump(mode="json"),
        model=models["base"].describe(),
        ft_model=models["ft"].describe() if "ft" in models else None,
        anatomy={"arch": an.arch, "n_layers": an.n_layers, "n_heads": an.n_heads},
        n_pairs=len(chosen),
        n_pairs_skipped_unequal_tokens=skipped,
        metric="logp(clean answer) - logp(corrupt answer), all answer tokens",
        effect="(m_patched - m_corrupt) / (m_clean - m_corrupt), ratio of means over pairs",
        positions=spec.positions,
        settings=results,
        shifts=shifts,
        shift_comparison=comparison,
    )
    return report, timings


def _usable_pairs(
    spec: CircuitSpec, settings: dict[str, tuple[str, int]], models: dict[str, Any]
) -> tuple[list[str], dict[str, dict[str, Any]], int]:
    """The first ``spec.n`` pairs usable in every setting (the same token length under each
    setting's tokenizer): their ids, their encodings per setting, and how many were skipped."""
    from iclft.analysis.pairs import make_pairs
    from iclft.analysis.patching import encode_pair

    shot_counts = sorted({s for _, s in settings.values()})
    tries = spec.n * 4 + 8
    texts = {s: make_pairs(spec.task, tries, seed=spec.seed, shots=s) for s in shot_counts}
    chosen: list[str] = []
    tokens: dict[str, dict[str, Any]] = {name: {} for name in settings}
    skipped = 0
    for i in range(tries):
        enc = {
            name: encode_pair(models[which].tokenizer, texts[shots][i])
            for name, (which, shots) in settings.items()
        }
        if any(v is None for v in enc.values()):
            skipped += 1
            continue
        pid = texts[0][i].id
        chosen.append(pid)
        for name, tp in enc.items():
            tokens[name][pid] = tp
        if len(chosen) == spec.n:
            break
    if not chosen:
        raise UserError(
            f"no {spec.task} pair tokenises to equal lengths with this model's tokenizer"
        )
    return chosen, tokens, skipped


def _setting_circuit(
    spec: CircuitSpec, name: str, an, pairs: list, check_rng, track: Track
) -> tuple[Any, Any, dict[str, Any]]:
    """One setting's patching: its effect table, its gap check, and its entry of
    ``circuits.json`` (effects, circuit, the attribution check, faithfulness, per-pair
    values)."""
    from iclft.analysis.circuits import EffectTable, agreement, circuit, gap_check
    from iclft.analysis.patching import ESTIMATE, exact_patching, patched_metric
    from iclft.models.anatomy import parse_component

    estimate = ESTIMATE[spec.estimator]
    kwargs: dict[str, Any] = {"positions": spec.positions}
    if spec.estimator == "exact":
        kwargs["batch_size"] = spec.batch_size
    comps = an.components()
    per_pair = []
    advance = track(f"{name}: patching {len(pairs)} pairs ({spec.estimator})", len(pairs))
    for pair in pairs:
        per_pair.append(estimate(an, pair, comps, **kwargs))
        advance(1)
    table = EffectTable.from_pairs(per_pair)
    eff = table.effects()
    gap_ok = gap_check(table.gap)
    circ = circuit(eff, table.components, top_k=spec.top_k, share=spec.share)
    # attribution checked: its top components re-measured by exact patching, batched
    ranked = circuit(eff, table.components, top_k=len(table.components))
    n_check = spec.verify_count(len(circ), len(ranked))
    check = None
    if n_check:
        top = [parse_component(c) for c in ranked[:n_check]]
        advance = track(f"{name}: exact re-measure of the top {n_check}", len(pairs))
        exact = []
        for pair in pairs:
            exact.append(
                exact_patching(an, pair, top, positions=spec.positions, batch_size=spec.batch_size)
            )
            advance(1)
        check = agreement(
            table,
            EffectTable.from_pairs(exact),
            top_k=max(len(circ), 1),
            n_boot=spec.n_boot,
            rng=check_rng,
        ).to_dict()
    # faithfulness: the circuit's components patched together (exact, one forward a pair)
    circ_comps = [parse_component(c) for c in circ]
    faith = [patched_metric(an, pair, circ_comps, positions=spec.positions) for pair in pairs]
    raw = np.array([p - c for _, c, p in faith])
    gap = np.array([cl - c for cl, c, _ in faith])
    result = {
        "effects": {c: _num(e) for c, e in zip(table.components, eff)},
        "circuit": circ,
        "identified": gap_ok.identified,
        "gap_check": gap_ok.to_dict(),
        "attribution_check": check,
        "circuit_faithfulness": _num(raw.mean() / gap.mean()) if gap.mean() else None,
        "clean_metric_mean": _num(table.clean.mean()),
        "corrupt_metric_mean": _num(table.corrupt.mean()),
        "per_pair": {
            "pair_ids": list(table.pair_ids),
            "clean": [_num(v) for v in table.clean],
            "corrupt": [_num(v) for v in table.corrupt],
            "raw_effects": [[_num(v) for v in row] for row in table.raw],
        },
    }
    return table, gap_ok, result


def _per_position(spec: CircuitSpec, name: str, an, tokenizer, pairs: list, track: Track):
    """Exact patching of ``spec.per_position``'s kinds one position at a time, with the tokens
    of the first pair at each offset (``circuits.json``'s ``per_position``)."""
    from iclft.analysis.circuits import PositionTable
    from iclft.analysis.patching import exact_patching_per_position

    pos_comps = an.components(tuple(spec.per_position))
    first = pairs[0]
    n_cells = len(pos_comps) * sum(p.length - p.first_diff for p in pairs)
    advance = track(f"{name}: per-position patching ({n_cells} patches)", n_cells)
    per_pos = [
        exact_patching_per_position(
            an, pair, pos_comps, batch_size=spec.batch_size, progress=advance
        )
        for pair in pairs
    ]
    ptable = PositionTable.from_pairs(per_pos)
    rows = first.rows("clean")[0].tolist()
    labels = []
    for o in ptable.offsets:
        p = first.prompt_len - 1 + o
        tok = tokenizer.decode([rows[p]]) if 0 <= p < len(rows) else ""
        labels.append(repr(tok)[1:-1][:8])
    return {
        **ptable.to_dict(),
        "tokens_of_first_pair": labels,
        "method": "exact, one component at one position",
    }


def _shifts(spec: CircuitSpec, tables: dict, gaps: dict):
    """Each circuit shift (base->icl, base->ft, icl->ft, as the settings exist) with its noise
    floor and test, and whether ICL's shift is larger than fine-tuning's."""
    from iclft.analysis.circuits import circuit_shift, compare_shifts

    rng = np.random.default_rng(spec.seed)
    order = [("base", "icl"), ("base", "ft"), ("icl", "ft")]
    shifts = [
        circuit_shift(
            tables[a],
            tables[b],
            names=(a, b),
            top_k=spec.top_k,
            share=spec.share,
            n_boot=spec.n_boot,
            n_splits=spec.n_splits,
            n_perm=spec.n_perm,
            not_identified=[s for s in (a, b) if not gaps[s].identified],
            rng=rng,
        ).to_dict()
        for a, b in order
        if a in tables and b in tables
    ]
    comparison = None
    if "ft" in tables:
        missing = [s for s in ("base", "icl", "ft") if not gaps[s].identified]
        comparison = compare_shifts(tables["base"], tables["icl"], tables["ft"]).to_dict()
        if missing:
            comparison.update(p_value=None, reason="not identified: " + ", ".join(missing))
    return shifts, comparison


def decide(shifts: list[dict[str, Any]], comparison: dict[str, Any] | None) -> None:
    """Holm-adjust the p-values of one analysis's tests (every identified shift's permutation
    test, and ICL's shift against fine-tuning's) as one family, and write into each test its
    ``p_holm``, the family size and its decision at :data:`iclft.stats.ALPHA`: ``shifted``
    for a shift, ``larger`` (``a``, ``b`` or ``None``) for the comparison."""
    from iclft.stats import ALPHA, holm

    tests = [sh["test"] for sh in shifts if sh.get("status") == "identified" and sh.get("test")]
    if comparison is not None:
        tests.append(comparison)
    adjusted = holm([t.get("p_value") for t in tests])
    family = sum(p is not None for p in adjusted)
    for t, p in zip(tests, adjusted):
        t["p_holm"] = None if p is None else float(f"{p:.4g}")
        t["holm_family"] = family
        t["alpha"] = ALPHA
        significant = p is not None and p < ALPHA
        if t is comparison:
            d = t.get("diff")
            t["larger"] = (t["a"] if d > 0 else t["b"]) if significant and d else None
        else:
            t["shifted"] = significant


def write_circuits(
    report: CircuitsResult,
    out_dir: Path,
    *,
    started: float,
    timings: dict[str, float],
    base: Any,
) -> None:
    """The one writer of a circuits result: ``circuits.json``, a heat map per setting
    (``heatmap_<setting>.png``, and ``positions_<setting>.png`` with per-position patching)
    and ``manifest.json`` (``base``: the base ``LoadedModel``)."""
    import torch

    from iclft.analysis.figures import plot_effect_heatmap, plot_position_heatmap
    from iclft.store import write_json_atomic, write_manifest

    spec, an = report.spec, report.anatomy
    for name, res in report.settings.items():
        plot_effect_heatmap(
            res["effects"],
            an["n_layers"],
            an["n_heads"],
            f"{report.task} · {name} ({res['shots']}-shot, {spec['estimator']}, "
            f"{report.n_pairs} pairs)"
            + ("" if res["identified"] else " · NOT IDENTIFIED: gap interval reaches 0"),
            out_dir / f"heatmap_{name}.png",
        )
        pos = res.get("per_position")
        if pos:
            plot_position_heatmap(
                pos["effects"],
                pos["offsets"],
                pos["tokens_of_first_pair"],
                f"{report.task} · {name} ({res['shots']}-shot, exact per position, "
                f"{report.n_pairs} pairs)",
                out_dir / f"positions_{name}.png",
            )
    write_json_atomic(out_dir / "circuits.json", report)
    write_manifest(
        out_dir,
        command="analyze circuits",
        started=started,
        model=report.model,
        ft_model=report.ft_model,
        seeds={"pairs": spec["seed"], "bootstrap": spec["seed"]},
        device=str(base.device),
        dtype=str(base.dtype),
        torch_threads=torch.get_num_threads(),
        spec=spec,
        timings=timings,
    )


def _num(v: float) -> float | None:
    v = float(v)
    return round(v, 6) if np.isfinite(v) else None
