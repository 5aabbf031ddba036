"""The runner: the grid, resume, refusal of a run directory that holds a different config.
(Crash safety at every named kill point: test_crash_resume.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from iclft.errors import ModelError, UserError
from iclft.models.loading import resolve_model
from iclft.run.config import validate_config
from iclft.run.plan import plan
from iclft.run.runner import run_experiment

from .conftest import rows as _rows
from .conftest import run_config as _config


def test_plan_and_full_run(tiny_dir, tmp_path):
    cfg = validate_config(_config(tiny_dir))
    kinds = [s.kind for s in plan(cfg)]
    assert kinds == ["icl", "finetune", "ft-eval", "finetune", "ft-eval"]
    s = run_experiment(cfg, tmp_path / "r", show_progress=False)
    assert (s.ran, s.skipped) == (5, 0)
    rows = _rows(tmp_path / "r")
    methods = {(r["method"], r["shots"]) for r in rows}
    assert methods == {("baseline", 0), ("icl", 1), ("icl", 2), ("ft-kv", 0), ("ft-lora", 0)}
    assert len(rows) == 2 * 2 * 5
    ft = [r for r in rows if r["method"].startswith("ft-")]
    assert all(r["train_examples"] == 2 * 4 for r in ft)
    curves = tmp_path / "r" / "finetune" / tiny_dir.name
    assert curves.exists() or any((tmp_path / "r" / "finetune").iterdir())
    # paired tests on the same items, consistent with the cells they compare
    comps = [json.loads(x) for x in (tmp_path / "r" / "comparisons.jsonl").open()]
    pairs = {((c["a_method"], c["a_shots"]), (c["b_method"], c["b_shots"])) for c in comps}
    others = [("baseline", 0), ("ft-kv", 0), ("ft-lora", 0)]
    learners = [("icl", 1), ("icl", 2), ("ft-kv", 0), ("ft-lora", 0)]
    assert pairs == {(("icl", k), o) for k in (1, 2) for o in others} | {
        (("ft-kv", 0), ("baseline", 0)),
        (("ft-lora", 0), ("baseline", 0)),
    } | {(x, ("constant", 0)) for x in learners}
    acc = {(r["task"], r["variant"], r["method"], r["shots"]): r["accuracy"] for r in rows}
    acc.update({(r["task"], r["variant"], "constant", 0): r["constant_accuracy"] for r in rows})
    for c in comps:
        assert c["n"] == 3 and c["seeds"] == [0]
        a = acc[(c["task"], c["variant"], c["a_method"], c["a_shots"])]
        b = acc[(c["task"], c["variant"], c["b_method"], c["b_shots"])]
        assert c["diff"] == pytest.approx(a - b) and c["ci_low"] <= c["diff"] <= c["ci_high"]
        assert 0 < c["p_value"] <= c["p_adjusted"] <= 1
        assert c["adjustment"] == f"holm over {len(comps)} comparisons"
    again = run_experiment(cfg, tmp_path / "r", show_progress=False)
    assert (again.ran, again.skipped) == (0, 5)
    assert _rows(tmp_path / "r") == rows


def test_a_different_config_is_refused_unless_forced(tiny_dir, tmp_path):
    cfg = validate_config(_config(tiny_dir, methods=["baseline"], shots=[0]))
    run_experiment(cfg, tmp_path / "r", show_progress=False)
    other = validate_config(_config(tiny_dir, methods=["baseline"], shots=[0], n=4))
    with pytest.raises(UserError, match="different config.*n"):
        run_experiment(other, tmp_path / "r", show_progress=False)
    first = _rows(tmp_path / "r")
    s = run_experiment(other, tmp_path / "r", force=True, show_progress=False)
    assert s.ran == 1 and all(r["n"] == 4 for r in _rows(tmp_path / "r"))
    assert _rows(tmp_path / "r.replaced-1") == first  # the old run moved aside, not deleted


def test_a_run_saved_before_a_setting_existed_resumes(tiny_dir, tmp_path):
    """config.json of an older iclft lacks the settings added since: they take their
    defaults when it is read, so the same config resumes instead of being refused."""
    cfg = validate_config(_config(tiny_dir, methods=["baseline"], shots=[0]))
    run_experiment(cfg, tmp_path / "r", show_progress=False)
    saved = tmp_path / "r" / "config.json"
    old = json.loads(saved.read_text())
    for key in ("positions", "share", "n_boot", "batch_size"):  # added to analysis.circuits
        del old["analysis"]["circuits"][key]
    # and the patching estimator was called ``method``
    old["analysis"]["circuits"]["method"] = old["analysis"]["circuits"].pop("estimator")
    saved.write_text(json.dumps(old))
    again = run_experiment(cfg, tmp_path / "r", show_progress=False)
    assert (again.ran, again.skipped) == (0, 1)


def test_analysis_stages_run_and_reach_the_report(tiny_dir, tmp_path):
    from iclft.report import build_report

    data = _config(
        tiny_dir,
        tasks=["boolean"],
        methods=["baseline", "icl"],
        shots=[0, 2],
        analysis={
            "circuits": {"enabled": True, "shots": 1, "n": 2, "estimator": "attribution"},
            "similarity": {"enabled": True, "shots": 2, "n": 3, "lr": 1e-2},
        },
    )
    cfg = validate_config(data)
    assert [s.kind for s in plan(cfg)] == ["icl", "circuits", "similarity"]
    s = run_experiment(cfg, tmp_path / "r", show_progress=False)
    assert s.ran == 3
    analysis = tmp_path / "r" / "analysis"
    assert list(analysis.rglob("circuits.json")) and list(analysis.rglob("similarity.json"))
    paths = build_report(tmp_path / "r")
    html = paths.html.read_text()
    assert "analysis" in " ".join(p.name for p in paths.figures)
    assert "similarity" in html.lower()


def _predictions(run_dir, stage: str) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "predictions" / f"{stage}.jsonl").open()]


def test_listed_checkpoints_are_evaluated_beside_the_final_model(tiny_dir, tmp_path, iclft_main):
    """eval_checkpoints [3, 1] of a 3-step run: rows for step 1 (a checkpoint) and step 3 (the
    final model) per method. Two warm-up steps make step 1's learning rate 0, so checkpoint-1
    holds the base weights and its rows must equal the baseline's: the checkpoint, not the
    final model, was evaluated."""
    finetune = {"train_n": 8, "steps": 3, "batch_size": 4, "eval_n": 2, "warmup_steps": 2,
                "eval_checkpoints": [3, 1]}  # fmt: skip
    fast = {m: {"lr": 1e-2} for m in ("ft-kv", "ft-lora")}
    cfg = validate_config(
        _config(tiny_dir, tasks=["boolean"], methods=["baseline", "ft-kv", "ft-lora"],
                finetune=finetune, finetune_overrides=fast)
    )  # fmt: skip
    assert cfg.finetune_for("ft-lora").eval_checkpoints == [1, 3]
    run = tmp_path / "r"
    run_experiment(cfg, run, show_progress=False)
    rows = _rows(run)
    base = [r for r in rows if r["method"] == "baseline"]
    for method in ("ft-kv", "ft-lora"):
        ft = [r for r in rows if r["method"] == method]
        assert [r["step"] for r in ft] == [1, 1, 3, 3]  # clean and misleading, step order
        assert [r["train_examples"] for r in ft] == [4, 4, 12, 12]
        out = run / ft[0]["ft_dir"]
        assert [r["checkpoint"] for r in ft] == [
            f"{ft[0]['ft_dir']}/checkpoints/checkpoint-1"
        ] * 2 + [None] * 2
        assert [(r["variant"], r["correct"]) for r in ft[:2]] == [
            (r["variant"], r["correct"]) for r in base
        ]
        base_preds = _predictions(run, "m0-s0-icl")
        preds = _predictions(run, f"m0-s0-{method}-eval")
        assert [p["step"] for p in preds] == [1] * len(base_preds) + [3] * len(base_preds)
        n = len(base_preds)
        assert [(p["id"], p["output"]) for p in preds[:n]] == [
            (p["id"], p["output"]) for p in base_preds
        ]
        assert [p["output"] for p in preds[n:]] != [p["output"] for p in base_preds]
        ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert ckpts == ["checkpoint-1", "checkpoint-3"]  # save_every 0: only the listed ones
    kv = run / [r for r in rows if r["method"] == "ft-kv"][0]["ft_dir"]
    weights = lambda d: load_file(str(d / "model.safetensors"))  # noqa: E731
    final, last, first = (
        weights(kv),
        weights(kv / "checkpoints/checkpoint-3"),
        weights(kv / "checkpoints/checkpoint-1"),
    )
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert all(torch.equal(first[k], v) for k, v in weights(tiny_dir).items())
    assert any(not torch.equal(final[k], first[k]) for k in final)

    lora_ckpt = run / [r for r in rows if r["method"] == "ft-lora"][0]["checkpoint"]
    code, err = iclft_main("eval", "--model", str(lora_ckpt), "--task", "boolean", "-n", "2",
                           "--device", "cpu", "-o", str(tmp_path / "eval"))  # fmt: skip
    assert code == 0, err
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert manifest["model"]["is_adapter"] and manifest["model"]["base_spec"] == str(tiny_dir)

    again = run_experiment(cfg, run, show_progress=False)
    assert again.ran == 0 and _rows(run) == rows
    (kv / "checkpoints/checkpoint-1/trainer_state.json").unlink()  # as a killed save leaves it
    with pytest.raises(ModelError, match="save was cut short"):
        resolve_model(str(kv / "checkpoints/checkpoint-1"))


def test_demo_sets_and_heldout_items_reach_comparisons_and_report(tiny_dir, tmp_path):
    """A run over 2 demonstration sets with held-out items: k-shot rows carry both sets,
    held-out rows are written but kept out of the report's cells and of the paired tests,
    which pair the sets' mean per item; the headline shows the chosen and the fixed k."""
    from iclft.report import build_report
    from iclft.report.data import load_run
    from iclft.report.tables import headline

    data = _config(
        tiny_dir, tasks=["parity"], methods=["baseline", "icl"], shots=[0, 1, 2], n=4,
        demo_sets=2, heldout_n=3, fixed_shots=2,
    )  # fmt: skip
    cfg = validate_config(data)
    run_experiment(cfg, tmp_path / "r", show_progress=False)
    rows = _rows(tmp_path / "r")
    held = [r for r in rows if r["split"] == "heldout"]
    assert {(r["variant"], r["shots"]) for r in held} == {("clean", 1), ("clean", 2)}
    icl = [r for r in rows if r["method"] == "icl" and r["split"] == "test"]
    assert icl and all(r["demo_sets"] == 2 and len(r["set_accuracies"]) == 2 for r in icl)
    comps = [json.loads(x) for x in (tmp_path / "r" / "comparisons.jsonl").open()]
    assert comps and all(c["n"] == 4 for c in comps)
    assert {c["a_sets"] for c in comps if c["a_method"] == "icl"} == {2}
    run = load_run(tmp_path / "r")
    model = run.models[0]
    assert run.cell(model, "parity", "clean", "icl", 1).n == 4  # the test items, not held-out
    assert run.heldout[(model, "parity", "clean", "icl", 1)].n == 3
    entries = [e for e in headline(run, model, "parity") if e.method == "icl"]
    assert entries[0].label.startswith("ICL (k=") and "best on held-out" in entries[0].label
    assert any(e.shots == 2 and "fixed" in e.label for e in entries)
    html = build_report(tmp_path / "r").html.read_text()
    assert "set spread" in html and "2 sets" in html
