"""The opt-in response cache: hits return what was computed, any change of model, tokenizer or
settings misses, and several processes can share one file."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from iclft.icl.cache import ResponseCache
from iclft.icl.engine import Engine
from iclft.icl.prompts import DemoPool, build_prompt
from iclft.models import load_model
from iclft.tasks import get_task

_CANDS = [" True", " False"]


def _prompts(task_name="boolean", shots=(0, 2), n=3):
    task = get_task(task_name)
    qs = task.generate("clean", n, 5) + task.generate("misleading", n, 5)
    pool = DemoPool(task, 5, "shared", max(shots))
    return [build_prompt(task, q, pool.demos(q, i, k), k) for k in shots for i, q in enumerate(qs)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, save_tiny):
    """Two tiny models with different weights, saved (so each has a weights hash)."""
    dirs = []
    for seed in (0, 1):
        dirs.append(save_tiny(tmp_path_factory.mktemp(f"cache-model-{seed}"), seed=seed))
    return dirs


def test_hits_return_what_was_computed_and_skip_the_model(model_dirs, tmp_path):
    lm = load_model(str(model_dirs[0]), device="cpu")
    prompts = _prompts()
    texts, hints = [p.text for p in prompts], [p.prefix for p in prompts]
    conts = [_CANDS] * len(texts)
    plain = Engine(lm.model, lm.tokenizer, max_new_tokens=4)
    want_gen, want_ll = plain.generate(texts, hints), plain.loglik(texts, conts, hints)

    db = tmp_path / "responses.sqlite"
    first = Engine(lm.model, lm.tokenizer, max_new_tokens=4, cache=ResponseCache.for_model(db, lm))
    assert first.generate(texts, hints) == want_gen
    assert first.loglik(texts, conts, hints) == want_ll
    assert (first.cache.hits, first.cache.misses) == (0, 2 * len(texts))

    again = ResponseCache.for_model(db, lm)  # a new process would open it like this
    second = Engine(lm.model, lm.tokenizer, max_new_tokens=4, cache=again)
    assert second.generate(texts, hints) == want_gen
    assert second.loglik(texts, conts, hints) == want_ll
    assert (again.hits, again.misses) == (2 * len(texts), 0)
    assert second.stats.forwards == 0  # nothing ran
    # a new prompt among old ones: only it is computed
    extra = texts[:2] + ["True and False ="]
    assert second.generate(extra)[:2] == want_gen[:2]
    assert again.misses == 1


def test_changed_weights_settings_or_tokenizer_miss(model_dirs, tmp_path, tiny_tokenizer):
    db = tmp_path / "responses.sqlite"
    texts = [p.text for p in _prompts(n=2)]
    a = load_model(str(model_dirs[0]), device="cpu")
    b = load_model(str(model_dirs[1]), device="cpu")
    ca = ResponseCache.for_model(db, a)
    Engine(a.model, a.tokenizer, max_new_tokens=4, cache=ca).generate(texts)
    cb = ResponseCache.for_model(db, b)  # other weights: nothing is shared
    got_b = Engine(b.model, b.tokenizer, max_new_tokens=4, cache=cb).generate(texts)
    assert (cb.hits, cb.misses) == (0, len(texts))
    assert got_b == Engine(b.model, b.tokenizer, max_new_tokens=4).generate(texts)
    ca2 = ResponseCache.for_model(db, a)  # other settings: a miss
    Engine(a.model, a.tokenizer, max_new_tokens=6, cache=ca2).generate(texts)
    assert ca2.misses == len(texts)
    Engine(a.model, a.tokenizer, max_new_tokens=4, cache=ca2).generate(texts, stop="none")
    assert ca2.misses == 2 * len(texts)
    tok = a.tokenizer
    tok.add_tokens(["<extra-token>"])  # another tokenizer: another key
    assert ResponseCache.for_model(db, a).model_key != ca.model_key


def test_a_model_without_weights_hash_is_refused(model_dirs, tmp_path):
    from dataclasses import replace

    from iclft.errors import UserError

    lm = load_model(str(model_dirs[0]), device="cpu")
    lm.resolved = replace(lm.resolved, weights_sha256=None)
    with pytest.raises(UserError, match="weights hash"):
        ResponseCache.for_model(tmp_path / "r.sqlite", lm)


def _writer(path: str, start: int, barrier) -> None:
    cache = ResponseCache(path, "model")
    barrier.wait()  # both processes write at the same moment
    for i in range(start, start + 300, 20):
        items = {cache.key("generate", f"p{j}", None): f"out{j}" for j in range(i, i + 20)}
        cache.put_many(items)
        assert cache.get_many(list(items)) == items


def test_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path, "model").close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, s, barrier)) for s in (0, 150)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    cache = ResponseCache(path, "model")
    keys = [cache.key("generate", f"p{j}", None) for j in range(450)]
    got = cache.get_many(keys)
    assert len(got) == 450 and got[keys[449]] == "out449"


def test_eval_cli_reuses_responses(model_dirs, tmp_path, iclft_main):
    db = tmp_path / "cli.sqlite"
    args = ["eval", "--model", str(model_dirs[0]), "--task", "boolean", "--shots", "0,1",
            "-n", "2", "--cache", str(db)]  # fmt: skip
    code, err = iclft_main(*args, "-o", str(tmp_path / "a"))
    assert code == 0, err
    code, err = iclft_main(*args, "-o", str(tmp_path / "b"))
    assert code == 0, err
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())["response_cache"]
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())["response_cache"]
    assert ma["hits"] == 0 and ma["misses"] > 0
    assert mb == {**ma, "hits": ma["misses"], "misses": 0}
    for name in ("predictions.jsonl", "results.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
