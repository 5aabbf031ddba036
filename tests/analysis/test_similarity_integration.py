"""ICL vs gradient descent end to end on the real embedded model (a few minutes on 2 cores; most
of it is layer-causal GD, whose 30 early-exit unembeddings over a 49k vocabulary dominate, run
on the trained and on the untrained model)."""

from __future__ import annotations

import json

import pytest

from iclft.analysis.settings import SimilaritySpec
from iclft.analysis.similarity import run_similarity
from iclft.analysis.similarity_table import LAYER_METRICS, MODELS, RANDOM, UPDATES


@pytest.mark.integration
def test_similarity_on_smollm2(tmp_path):
    spec = SimilaritySpec(task="parity", shots=2, n=4, lr=1e-3, seed=0, random_draws=2)
    run_similarity(spec, tmp_path, model="smollm2-135m", device="cpu")
    data = json.loads((tmp_path / "similarity.json").read_text())
    assert data["anatomy"] == {"arch": "llama", "n_layers": 30, "n_heads": 9}
    assert data["n_queries"] == 4
    assert data["skipped"] == []  # the real tokenizer aligns ZSL and ICL prompts
    for mname in MODELS:
        for name in LAYER_METRICS:
            for setting in (*UPDATES, *RANDOM.values()):
                st = data["metrics"][mname][name][setting]
                assert len(st["per_layer"]) == 30
                assert st["ci_low"] <= st["value"] <= st["ci_high"]
    s = data["summary"]
    # SimAM is dominated by the shared base scores: near 1 for every update and for ZSL
    assert min(s[f"simam_{u}"]["value"] for u in (*UPDATES, "zsl")) > 0.5
    norms = data["update_norms"]["trained"]
    assert norms["gd"]["total"] > 0
    assert abs(norms["random_gd"]["total"] - norms["gd"]["total"]) < 1e-3 * norms["gd"]["total"]
    assert (tmp_path / "similarity_per_layer.png").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["model"]["alias"] == "smollm2-135m"
