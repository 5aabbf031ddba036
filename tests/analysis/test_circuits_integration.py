"""End to end on the real embedded model (a minute at most)."""

from __future__ import annotations

import json

import pytest

from iclft.analysis.pipeline import CircuitSpec, run_circuits


@pytest.mark.integration
def test_circuits_on_smollm2(tmp_path):
    spec = CircuitSpec(
        task="parity",
        shots=1,
        n=2,
        estimator="attribution",
        top_k=5,
        n_boot=50,
        per_position=("resid",),
    )
    run_circuits(spec, tmp_path, model="smollm2-135m", device="cpu", dtype="float32")
    data = json.loads((tmp_path / "circuits.json").read_text())
    assert data["anatomy"] == {"arch": "llama", "n_layers": 30, "n_heads": 9}
    assert data["n_pairs"] == 2
    for s in data["settings"].values():
        assert len(s["effects"]) == 30 * (9 + 2)
        assert len(s["circuit"]) == 5
        assert s["identified"] == (s["gap_check"]["gap_ci_low"] > 0)
        check = s["attribution_check"]  # attribution's top 10 re-measured exactly
        assert check["n_remeasured"] == 10 and check["components"][:5] == s["circuit"]
        assert check["spearman"]["value"] is not None and 0 <= check["top_k_overlap"] <= 5
        pp = s["per_position"]  # the last residual stream restores the run at the last token
        assert pp["effects"]["L29.RESID"][pp["offsets"].index(0)] == pytest.approx(1, abs=1e-3)
    shift = data["shifts"][0]
    values = shift if shift["status"] == "identified" else shift["unguarded"]
    assert values["noise_floor"]["half_size"] == 1
    assert (tmp_path / "heatmap_icl.png").exists() and (tmp_path / "positions_icl.png").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["model"]["alias"] == "smollm2-135m"
