"""``iclft analyze circuits``: the library call on tiny models, and the CLI's input checks."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from iclft.analysis.pipeline import CircuitSpec, run_circuits
from iclft.errors import UserError
from iclft.models import LoadedModel, ResolvedModel


def _loaded(model, tokenizer, name):
    resolved = ResolvedModel(spec=name, kind="local", path=None)
    return LoadedModel(model, tokenizer, resolved, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("estimator", ["exact", "attribution"])
def test_run_circuits_writes_everything(estimator, tmp_path, tiny_model_factory, tiny_tokenizer):
    n = len(tiny_tokenizer)
    loaded = {
        "base": _loaded(tiny_model_factory("qwen2", n, seed=0), tiny_tokenizer, "base"),
        "ft": _loaded(tiny_model_factory("qwen2", n, seed=1), tiny_tokenizer, "ft"),
    }
    per_position = ("resid",) if estimator == "attribution" else ()
    spec = CircuitSpec(
        task="parity",
        shots=1,
        n=3,
        estimator=estimator,
        top_k=3,
        n_boot=20,
        per_position=per_position,
    )
    report = run_circuits(spec, tmp_path, loaded=loaded, ft_model=None)
    data = json.loads((tmp_path / "circuits.json").read_text())
    assert data == json.loads(json.dumps(report.to_json()))
    assert set(data["settings"]) == {"base", "icl", "ft"}
    assert data["n_pairs"] == 3
    for s in data["settings"].values():
        assert len(s["effects"]) == 2 * (4 + 2)
        assert len(s["circuit"]) == 3
        assert len(s["per_pair"]["raw_effects"]) == 3
    assert [(s["from"], s["to"]) for s in data["shifts"]] == [
        ("base", "icl"),
        ("base", "ft"),
        ("icl", "ft"),
    ]
    for s in data["settings"].values():
        g = s["gap_check"]
        assert (
            s["identified"]
            == g["identified"]
            == (g["gap_ci_low"] is not None and g["gap_ci_low"] > 0)
        )
        if estimator == "exact":
            assert s["attribution_check"] is None
        else:  # attribution's top 2 x 3 heads/MLPs re-measured exactly
            a = s["attribution_check"]
            assert a["n_remeasured"] == 6 and a["top_k"] == 3 and 0 <= a["top_k_overlap"] <= 3
            assert a["components"] == s["circuit"] + a["components"][3:]
            assert a["spearman"]["value"] is None or -1 <= a["spearman"]["value"] <= 1
    for name, s in data["settings"].items():
        if not per_position:
            assert "per_position" not in s and not (tmp_path / f"positions_{name}.png").exists()
            continue
        pp = s["per_position"]
        assert set(pp["effects"]) == {"L0.RESID", "L1.RESID"}
        assert 0 in pp["offsets"] and len(pp["tokens_of_first_pair"]) == len(pp["offsets"])
        assert all(len(v) == len(pp["offsets"]) for v in pp["effects"].values())
        assert max(pp["n_pairs"]) == 3
        # one-token answers: the metric reads the last prompt position, which alone restores it
        assert pp["effects"]["L1.RESID"][pp["offsets"].index(0)] == pytest.approx(1, abs=1e-3)
        assert (tmp_path / f"positions_{name}.png").read_bytes()[:4] == b"\x89PNG"
    for sh in data["shifts"]:
        both = (
            data["settings"][sh["from"]]["identified"] and data["settings"][sh["to"]]["identified"]
        )
        assert sh["status"] == ("identified" if both else "not identified")
        values = sh if both else sh["unguarded"]
        assert len(values["per_layer_cosine_distance"]) == 2
        floor = values["noise_floor"]
        assert floor["half_size"] == 1 and floor["n_splits"] == 100
        assert floor["all"]["jaccard_distance"]["floor"]["value"] is not None
        test = values["test"]  # 3 pairs: all 2^3 swaps, and p can never go below 2/8
        assert test["exact"] and test["n_permutations"] == 8 and test["p_value"] >= 0.25
        assert ("p_holm" in test) == both and test.get("shifted") in (None, False)
    cmp_ = data["shift_comparison"]
    assert (cmp_["a"], cmp_["b"], cmp_["n_pairs"]) == ("icl", "ft", 3)
    assert cmp_["p_value"] is None or 0 < cmp_["p_value"] <= 1
    assert cmp_["p_value"] is not None or cmp_["reason"]
    for name in ("base", "icl", "ft"):
        png = tmp_path / f"heatmap_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["command"] == "analyze circuits"
    assert manifest["spec"]["estimator"] == estimator


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nope"], "unknown task"),
        (["--task", "parity", "--estimator", "magic"], "unknown patching estimator"),
        (["--task", "parity", "--shots", "0"], "--shots: must be >= 1"),
        (["--task", "parity", "-n", "0"], "-n: must be >= 1"),
        (["--task", "parity", "--positions", "first"], "unknown positions"),
        (["--task", "parity", "--ft-model", "/no/such/dir"], "is not a directory"),
        (["--task", "parity", "--verify", "-1"], "--verify: must be >= 0"),
        (["--task", "parity", "--splits", "-2"], "--splits: must be >= 0"),
        (["--task", "parity", "--permutations", "-1"], "--permutations: must be >= 0"),
        (["--task", "parity", "--share", "1.5"], "--share: must be <= 1"),
        (["--task", "parity", "--per-position", "heads"], "unknown per-position kind"),
    ],
)
def test_bad_input_fails_before_loading_a_model(args, message, tmp_path, monkeypatch):
    import iclft.models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(iclft.models, "load_model", no_load)
    from iclft.cli import app

    result = CliRunner().invoke(app, ["analyze", "circuits", *args, "-o", str(tmp_path / "o")])
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
