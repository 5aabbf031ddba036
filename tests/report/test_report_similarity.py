"""The report's analysis section shows similarity.json's controls: the trained and the untrained
model, GD and layer-causal GD beside their norm-matched random controls and Dai's baseline."""

from __future__ import annotations

import html

import torch


def test_analysis_section_shows_the_similarity_controls(
    tmp_path, make_run, tiny_model_factory, tiny_tokenizer
):
    from iclft.analysis.settings import SimilaritySpec
    from iclft.analysis.similarity import run_similarity
    from iclft.models import LoadedModel, ResolvedModel
    from iclft.report import build_report

    run = make_run(tmp_path / "run", tasks=("parity",), variants=("clean",),
                   methods=("baseline", "icl"), curves=False, analysis=False)  # fmt: skip
    model = tiny_model_factory("llama", len(tiny_tokenizer), seed=3)
    loaded = LoadedModel(model, tiny_tokenizer, ResolvedModel(spec="tiny", kind="local", path=None),
                         torch.device("cpu"), torch.float32)  # fmt: skip
    spec = SimilaritySpec(task="parity", shots=2, n=2, lr=0.05, random_draws=2, n_boot=50)
    out = run / "analysis" / "tiny" / "similarity" / "parity"
    data = run_similarity(spec, out, loaded=loaded).to_json()

    p = build_report(run)
    assert "analysis" not in p.skipped
    text = html.unescape(p.html.read_text())
    assert "ICL vs GD with controls (parity), 2 queries" in text
    for heading in ("layer-causal GD", "random (GD norms)", "random (LCGD norms)", "Dai uniform"):
        assert f"<th>{heading}</th>" in text
    assert "<td>untrained</td>" in text and "<td>trained</td>" in text
    st = data["metrics"]["untrained"]["simaou_norm"]["random_lcgd"]
    cell = f"{st['value']:.3f} [{st['ci_low']:.3f}, {st['ci_high']:.3f}] ±{st['sd']:.3f} sd/2"
    assert cell in text
    assert "DIFFERS from the reference" in text  # where the read position differs
    md = p.markdown.read_text()
    assert "random (GD norms)" in md
