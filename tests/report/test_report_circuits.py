"""The report's circuit sentences: one per model and task, decided by the tests written into
circuits.json, with raw and Holm-adjusted p-values over the run's circuit tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from iclft.analysis.circuits import EffectTable, circuit_shift, compare_shifts, gap_check
from iclft.analysis.patching import PairEffects
from iclft.analysis.pipeline import decide
from iclft.records import p_text
from iclft.stats import holm

NAMES = tuple(
    n for layer in range(3) for n in (f"L{layer}.H0", f"L{layer}.H1", f"L{layer}.MLP",
                                      f"L{layer}.RESID")
)  # fmt: skip


def _table(rng, effect, n) -> EffectTable:
    raw = effect + 0.3 * rng.normal(size=(n, len(NAMES)))
    return EffectTable.from_pairs(
        [PairEffects(f"p{i}", NAMES, clean=1.0, corrupt=0.0, patched=r) for i, r in enumerate(raw)]
    )


def _circuits_json(seed: int, n: int, icl_move: float, ft_move: float, task: str, model: str,
                   base_gap: float = 1.0) -> dict:  # fmt: skip
    """A circuits.json as find_circuits writes it, from the real shift functions on synthetic
    effects (FT and ICL move the profile by the given amounts in different directions)."""
    rng = np.random.default_rng(seed)
    e = np.array([2.0, 0.1, 1.0, 0.0] * 3)
    d1 = np.array([0.0, 2.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    d2 = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, -1.0, 0.0])
    tables = {
        "base": _table(rng, e, n),
        "icl": _table(rng, e + icl_move * d1, n),
        "ft": _table(rng, e + ft_move * d2, n),
    }
    gaps = {k: gap_check(t.gap) for k, t in tables.items()}
    gaps["base"] = gap_check(np.full(n, base_gap) + 0.01 * rng.normal(size=n))  # 0: not above 0
    shifts = [
        circuit_shift(
            tables[a],
            tables[b],
            names=(a, b),
            n_boot=20,
            n_splits=5,
            n_perm=500,
            not_identified=[s for s in (a, b) if not gaps[s].identified],
            rng=rng,
        ).to_dict()  # fmt: skip
        for a, b in (("base", "icl"), ("base", "ft"), ("icl", "ft"))
    ]
    comparison = compare_shifts(tables["base"], tables["icl"], tables["ft"]).to_dict()
    if not gaps["base"].identified:
        comparison.update(p_value=None, reason="not identified: base")
    decide(shifts, comparison)
    return {
        "task": task,
        "model": {"spec": model, "alias": model},
        "n_pairs": n,
        "settings": {
            k: {
                "shots": 0 if k != "icl" else 2,
                "identified": g.identified,
                "gap_check": g.to_dict(),
            }
            for k, g in gaps.items()
        },  # fmt: skip
        "shifts": shifts,
        "shift_comparison": comparison,
    }


def _write(run: Path, model: str, task: str, obj: dict) -> None:
    d = run / "analysis" / model / "circuits" / task
    d.mkdir(parents=True, exist_ok=True)
    (d / "circuits.json").write_text(json.dumps(obj))


@pytest.fixture
def run(tmp_path, make_run):
    root = make_run(tmp_path / "run", models=("smollm2-135m",), tasks=("boolean", "parity"),
                    analysis=False, curves=False)  # fmt: skip
    # boolean: ICL moves the circuit a lot, FT barely; parity: the base circuit is not identified
    model = "smollm2-135m"
    _write(root, model, "boolean", _circuits_json(1, 16, 1.5, 0.05, "boolean", model))
    _write(root, model, "parity", _circuits_json(2, 16, 1.5, 0.0, "parity", model, base_gap=0.0))
    return root


def test_one_circuit_sentence_per_model_and_task_with_run_wide_holm(run):
    from iclft.report.circuits import circuit_sentences
    from iclft.report.data import load_run

    data = load_run(run)
    got = circuit_sentences(data)
    assert [(m, t) for m, t, _ in got] == [("smollm2-135m", "boolean"), ("smollm2-135m", "parity")]
    boolean, parity = (s for _, _, s in got)
    files = {
        t: json.loads((run / "analysis/smollm2-135m/circuits" / t / "circuits.json").read_text())
        for t in ("boolean", "parity")
    }
    tests = [sh["test"] for t in ("boolean", "parity") for sh in files[t]["shifts"]
             if sh["status"] == "identified"]  # fmt: skip
    tests += [files[t]["shift_comparison"] for t in ("boolean", "parity")
              if files[t]["shift_comparison"]["p_value"] is not None]  # fmt: skip
    # the family: 3 boolean shifts + the boolean comparison + parity's ICL -> FT shift
    assert len(tests) == 5
    adjusted = holm([t["p_value"] for t in tests])
    assert "Holm over the run's 5 circuit tests, decided at 0.05" in boolean

    b_icl = files["boolean"]["shifts"][0]["test"]
    p, q = b_icl["p_value"], adjusted[0]
    assert f"{p_text(p, 'permutation p')}, {p_text(q, 'Holm p')}" in boolean
    assert q < 0.05 and "from the 0-shot base to ICL, the circuit shifts" in boolean
    c = files["boolean"]["shift_comparison"]
    assert c["diff"] > 0 and p_text(c["p_value"], "jackknife t p") in boolean
    assert "ICL's shift is larger than fine-tuning's" in boolean
    # no p of 0 anywhere, and every p printed in a sentence is a test's
    assert not re.search(r"p=0(?![.\d])", boolean + parity)
    # parity: the base circuit is not identified, so neither base shift nor the comparison
    assert (
        "from the 0-shot base to ICL: not tested (the 0-shot base circuit is not identified"
        in parity
    )
    assert "ICL's shift against fine-tuning's: not tested (not identified: base)" in parity
    assert "between ICL and fine-tuning, " in parity and "permutation p=" in parity


def test_a_shift_at_the_raw_level_that_holm_takes_away_is_not_claimed(run):
    """Decisions follow the run-wide adjusted p, not the raw one nor the file's own Holm."""
    from iclft.report.circuits import circuit_sentences
    from iclft.report.data import load_run

    path = run / "analysis/smollm2-135m/circuits/boolean/circuits.json"
    obj = json.loads(path.read_text())
    for sh, p in zip(obj["shifts"], (0.02, 0.5, 0.5)):
        sh["test"]["p_value"] = p
        sh["test"]["p_holm"] = p  # a stale per-file value the report must not use
    obj["shift_comparison"]["p_value"] = 0.5
    path.write_text(json.dumps(obj))
    (_, _, boolean), _ = circuit_sentences(load_run(run))
    assert "permutation p=0.02, Holm p=" in boolean
    assert "from the 0-shot base to ICL, no shift is shown" in boolean
    assert "shifts are not distinguishable" in boolean


def test_summary_carries_the_circuit_sentences_and_old_files_read(run, tmp_path, make_run):
    from iclft.report import build_report

    paths = build_report(run)
    md = paths.markdown.read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert summary.count("Circuits on ") == 2 and "Holm p=" in summary
    assert "permutation p (1 - cos)" in md  # the shift table's test column
    # a run whose circuits.json predates the tests (the synthetic one): said, not invented
    old = build_report(make_run(tmp_path / "old", tasks=("expression",), curves=False))
    text = old.markdown.read_text().split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "Circuits on expression" in text
    assert "not tested (this circuits.json has no permutation test)" in text
    assert "no circuit test could be made" in text


def test_an_exact_permutation_test_on_few_pairs_says_how_small_its_p_can_be():
    """With 3 pairs, every one of the 2^3 swaps is enumerated: no p falls below 2/8."""
    from iclft.report.circuits import _shift_text

    t = {"p_value": 0.25, "exact": True, "n_pairs": 3,
         "groups": {"all": {"statistic": 0.4, "null_mean": 0.3}}}  # fmt: skip
    text = _shift_text({"status": "identified", "test": t}, "base to ICL", {id(t): 1.0})
    assert "permutation p=0.25, Holm p=1" in text
    assert "with 3 pairs no p falls below 0.25" in text and "no shift is shown" in text
