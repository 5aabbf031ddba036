"""``batch_size="auto"``: the engine starts large and halves on out-of-memory (here a device
limit injected at a chosen batch size, ``ICLFT_OOM_ABOVE``), giving the same answers."""

from __future__ import annotations

import json

import pytest
import torch

from iclft.faults import OOM_ENV
from iclft.icl.engine import AUTO_BATCH, Engine
from iclft.icl.prompts import DemoPool, build_prompt
from iclft.tasks import get_task


def _prompts():
    task = get_task("boolean")
    qs = task.generate("clean", 6, 5) + task.generate("misleading", 6, 5)
    pool = DemoPool(task, 5, "per-query", 2)
    return [build_prompt(task, q, pool.demos(q, i, k), k) for k in (0, 2) for i, q in enumerate(qs)]


def test_auto_halves_until_the_batch_fits(monkeypatch, tiny_models, tiny_tokenizer):
    model = tiny_models["llama"]
    prompts = _prompts()
    texts, hints = [p.text for p in prompts], [p.prefix for p in prompts]
    want_gen = Engine(model, tiny_tokenizer, batch_size=4).generate(texts, hints)
    want_ll = Engine(model, tiny_tokenizer, batch_size=4).loglik(texts, [[" True", " False"]] * 24)
    monkeypatch.setenv(OOM_ENV, "300")  # about 4 rows of these prompts fit
    with pytest.raises(torch.OutOfMemoryError):
        Engine(model, tiny_tokenizer, batch_size=16).generate(texts, hints)
    eng = Engine(model, tiny_tokenizer, batch_size="auto")
    assert eng.batch_size == AUTO_BATCH
    seen = []
    assert eng.generate(texts, hints, progress=seen.append) == want_gen
    assert sum(seen) == len(texts)  # a failed attempt's progress is not counted twice
    assert 1 <= eng.batch_size < AUTO_BATCH
    fitted = eng.batch_size
    got = eng.loglik(texts, [[" True", " False"]] * 24)
    assert eng.batch_size <= fitted  # the size that worked is kept
    for a, b in zip(got, want_ll):
        assert a == pytest.approx(b, abs=1e-4)
    monkeypatch.setenv(OOM_ENV, "1")  # nothing fits: the error reaches the caller
    with pytest.raises(torch.OutOfMemoryError):
        Engine(model, tiny_tokenizer, batch_size="auto").generate(texts[:2])


def test_eval_records_the_batch_size_it_used(tmp_path, monkeypatch, iclft_main, save_tiny):
    d = save_tiny(tmp_path / "m")
    monkeypatch.setenv(OOM_ENV, "400")
    code, err = iclft_main("eval", "--model", str(d), "--task", "boolean", "--shots", "0,2", "-n",
                           "4", "--batch-size", "auto", "-o", str(tmp_path / "e"))  # fmt: skip
    assert code == 0, err
    used = json.loads((tmp_path / "e" / "manifest.json").read_text())["batch_size"]["auto"]
    assert 1 <= used < AUTO_BATCH
    code, err = iclft_main("eval", "--model", str(d), "--task", "boolean", "--batch-size",
                           "many", "-o", str(tmp_path / "f"))  # fmt: skip
    assert code == 2 and "positive integer or 'auto'" in err
