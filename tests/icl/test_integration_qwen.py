"""End to end on qwen2.5-coder-0.5b (the Qwen2 family of the paper's Qwen1.5 models).

Skipped unless the alias is already cached here: fetching it downloads 0.5 GB and writes a
2.5 GB fp32 cache (`iclft models fetch qwen2.5-coder-0.5b`), more than a test should start.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import StoppingCriteriaList

from iclft.icl.decode import NewlineStop
from iclft.icl.engine import Engine
from iclft.icl.evaluate import EvalSpec, run_eval

pytestmark = pytest.mark.integration

ALIAS = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def qwen():
    from iclft.models.cache import check_cache
    from iclft.models.loading import load_model

    check = check_cache(ALIAS)
    if check.state != "ok":
        pytest.skip(f"{ALIAS} is not cached ({check.state}); `iclft models fetch {ALIAS}` first")
    return load_model(ALIAS, device="cpu")


def _plain_generate(lm, prompt: str, max_new_tokens: int) -> str:
    """One ``model.generate`` call for one prompt, greedy, stopped at the first newline."""
    tok = lm.tokenizer
    enc = tok(prompt, return_tensors="pt")
    n = enc.input_ids.shape[1]
    with torch.inference_mode():
        out = lm.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([NewlineStop(tok, n)]),
            pad_token_id=tok.pad_token_id,
        )
    return tok.decode(out[0, n:], skip_special_tokens=True)


def test_loads_as_qwen2_in_fp32(qwen):
    from iclft.models.anatomy import family_of

    assert family_of(qwen.model).name == "qwen2"
    assert qwen.model.dtype == torch.float32
    assert sum(p.numel() for p in qwen.model.parameters()) == 630_167_424
    assert qwen.resolved.alias == ALIAS and qwen.resolved.weights_sha256


def test_few_shot_prompts_are_answered(qwen):
    """The few-shot checks of the model survey: an instruct coder model still does plain ICL."""
    engine = Engine(qwen.model, qwen.tokenizer, batch_size=2, max_new_tokens=4)
    got = engine.generate(
        [
            "France: Paris\nJapan: Tokyo\nItaly: Rome\nGermany:",
            "hot -> cold\nbig -> small\nfast -> slow\nup ->",
        ]
    )
    assert [g.strip() for g in got] == ["Berlin", "down"]


def test_small_eval_matches_plain_generate(qwen, tmp_path):
    spec = EvalSpec(tasks=("boolean", "expression"), variants=("clean",), shots=(0, 2), n=2, seed=5)
    res = run_eval(spec, tmp_path, model=ALIAS, device="cpu", show_progress=False)
    assert len(res.results) == 2 * 2
    assert len(res.predictions) == 2 * 2 * 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == qwen.resolved.weights_sha256
    for row in res.predictions:
        assert row.output == _plain_generate(qwen, row.prompt, spec.max_new_tokens), row.id
