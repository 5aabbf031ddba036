"""The engine against the model's own computation, on tiny models of four architectures."""

from __future__ import annotations

import pytest
import torch

import iclft.icl.kv as kv_mod
from iclft.icl.engine import Engine, sliding_window
from iclft.icl.prompts import DemoPool, build_prompt
from iclft.models.anatomy import cache_keyword
from iclft.tasks import get_task

ARCHS = ("llama", "qwen2", "gemma3", "gpt2")


def _prompts(task_name="expression", shots=(0, 1, 3, 6), n=4, mode="shared"):
    task = get_task(task_name)
    qs = task.generate("clean", n, 5) + task.generate("misleading", n, 5)
    pool = DemoPool(task, 5, mode, max(shots))
    return [build_prompt(task, q, pool.demos(q, i, k), k) for k in shots for i, q in enumerate(qs)]


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_cache_logits_equal_full_forward(arch, tiny_models, tiny_tokenizer):
    """Logits of suffixes run on a reused prefix cache (batched, padded between prefix and
    suffix) equal the logits of each whole sequence run alone without a cache."""
    model = tiny_models[arch]
    eng = Engine(model, tiny_tokenizer)
    task = get_task("boolean")
    prefix_text = task.instruction + "\n\n" + task.render_demo(task.generate("clean", 1, 9)[0])
    prefix = tuple(eng.encode(prefix_text))
    queries = [task.render_query(e) for e in task.generate("misleading", 3, 9)]
    suffixes = [eng.encode(q) for q in queries]
    if eng.window is not None and len(prefix) + max(map(len, suffixes)) >= eng.window:
        # padding would count against the sliding window: the planner batches only equal
        # suffix lengths for such models (checked below), so test that case
        m = min(map(len, suffixes))
        suffixes = [s[:m] for s in suffixes]
    else:
        suffixes[1] = suffixes[1][:5]  # unequal lengths force padding
    with torch.inference_mode():
        ids, mask, pos, cache = eng.kv.batch_inputs([prefix] * len(suffixes), suffixes)
        got = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, **{cache_keyword(model): cache}
        ).logits
        for b, s in enumerate(suffixes):
            whole = torch.tensor([list(prefix) + list(s)])
            want = model(input_ids=whole).logits[0, -len(s) :]
            torch.testing.assert_close(got[b, -len(s) :], want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_one_at_a_time(arch, tiny_models, tiny_tokenizer):
    model = tiny_models[arch]
    prompts = _prompts("relation", shots=(0, 2), n=5, mode="per-query")
    texts, prefixes = [p.text for p in prompts], [p.prefix for p in prompts]
    batched = Engine(model, tiny_tokenizer, batch_size=8, max_new_tokens=5).generate(
        texts, prefixes
    )
    single = Engine(model, tiny_tokenizer, batch_size=1, max_new_tokens=5)
    one_by_one = [single.generate([t])[0] for t in texts]
    assert batched == one_by_one


@pytest.mark.parametrize("arch", ARCHS)
def test_loglik_with_cache_equals_without(arch, tiny_models, tiny_tokenizer):
    model = tiny_models[arch]
    prompts = _prompts("boolean", shots=(0, 2, 4), n=3)
    conts = [[" True", " False"]] * len(prompts)
    cached = Engine(model, tiny_tokenizer, batch_size=6).loglik(
        [p.text for p in prompts], conts, [p.prefix for p in prompts]
    )
    plain = Engine(model, tiny_tokenizer, batch_size=1).loglik([p.text for p in prompts], conts)
    # and against a direct teacher-forced computation
    for p, c, row in zip(prompts, conts, plain):
        for cand, score in zip(c, row):
            ctx = tiny_tokenizer(p.text)["input_ids"]
            whole = tiny_tokenizer(p.text + cand)["input_ids"]
            with torch.inference_mode():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
            want = sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))
            assert score == pytest.approx(want, abs=1e-4)
    for a, b in zip(cached, plain):
        assert a == pytest.approx(b, abs=1e-4)


def test_shared_prefix_is_computed_once_per_shot_count(tiny_models, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(kv_mod, "PREFIX_BLOCK", 16)  # so these short prefixes have blocks
    prompts = _prompts(shots=(0, 1, 2, 4), n=5)
    eng = Engine(tiny_models["llama"], tiny_tokenizer, batch_size=4)
    eng.generate([p.text for p in prompts], [p.prefix for p in prompts])
    lengths = sorted({len(eng.encode(p.prefix)) for p in prompts})
    # nested: each build extends the whole blocks of the previous one, so the prefix tokens
    # computed are the longest prefix's length plus at most one partial block per shot count,
    # rather than the sum over shot counts
    assert eng.stats.prefix_tokens <= lengths[-1] + 16 * len(lengths)
    assert eng.stats.prefix_tokens < sum(lengths)


def test_a_prefix_cache_does_not_depend_on_what_was_cached_before(
    tiny_models, tiny_tokenizer, monkeypatch
):
    """The cache of a prefix is bit for bit the same computed alone or after a shorter prefix it
    extends (so splitting batches between processes cannot change a result)."""
    monkeypatch.setattr(kv_mod, "PREFIX_BLOCK", 16)
    prompts = _prompts(shots=(1, 4), n=1)
    short, long = sorted({tuple(Engine(tiny_models["llama"], tiny_tokenizer).encode(p.prefix))
                          for p in prompts}, key=len)  # fmt: skip
    assert long[: len(short)] == short and len(long) > 32
    with torch.inference_mode():
        alone = Engine(tiny_models["llama"], tiny_tokenizer).kv.prefix_cache(long)
        after = Engine(tiny_models["llama"], tiny_tokenizer)
        after.kv.prefix_cache(short)
        again = after.kv.prefix_cache(long)
    for a, b in zip(alone.layers, again.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_sliding_window_models_are_never_padded_past_the_window(tiny_models, tiny_tokenizer):
    eng = Engine(tiny_models["gemma3"], tiny_tokenizer, batch_size=16, max_new_tokens=4)
    assert eng.window == 64
    prompts = _prompts("relation", shots=(0, 3), n=6, mode="per-query")
    eng.generate([p.text for p in prompts], [p.prefix for p in prompts])
    long_ones = [p for p in prompts if len(eng.encode(p.text)) + 4 >= 64]
    assert long_ones  # the case is exercised
    seqs = [eng.encode(p.text) for p in prompts]
    hints = [eng.encode(p.prefix) for p in prompts]
    for _packed, _prefixes, batch in eng._plan(seqs, hints, [1] * len(seqs), 4):
        lens = {len(seqs[i]) for i in batch}
        if max(lens) + 4 >= 64:
            assert len(lens) == 1


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_ragged_prefixes_in_one_batch_equal_full_forwards(arch, tiny_models, tiny_tokenizer):
    """Rows continuing different cached prefixes (of different lengths) in one batch compute
    what each whole sequence computes alone."""
    model = tiny_models[arch]
    eng = Engine(model, tiny_tokenizer)
    task = get_task("parity")
    demos = task.generate("clean", 3, 4)
    prefixes = [
        tuple(eng.encode(task.instruction + "\n\n" + "\n\n".join(task.render_demo(d) for d in ds)))
        for ds in (demos[:1], demos[:3], [])
    ]
    prefixes[2] = prefixes[2][:3]
    suffixes = [eng.encode(task.render_query(e)) for e in task.generate("misleading", 3, 4)]
    suffixes[0] = suffixes[0][:7]
    with torch.inference_mode():
        ids, mask, pos, cache = eng.kv.batch_inputs(prefixes, suffixes)
        got = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, **{cache_keyword(model): cache}
        ).logits
        for b, (p, s) in enumerate(zip(prefixes, suffixes)):
            want = model(input_ids=torch.tensor([list(p) + list(s)])).logits[0, -len(s) :]
            torch.testing.assert_close(got[b, -len(s) :], want, atol=1e-4, rtol=1e-4)


def test_per_query_prompts_reuse_their_own_shorter_prompts(tiny_models, tiny_tokenizer):
    """Per-query demonstrations nest across shot counts of the same query: the engine builds
    each query's longer prefix on its shorter one instead of encoding it again."""
    prompts = _prompts("boolean", shots=(1, 2, 4), n=3, mode="per-query")
    eng = Engine(tiny_models["llama"], tiny_tokenizer, batch_size=4, max_new_tokens=3)
    eng.generate([p.text for p in prompts], [p.prefix for p in prompts])
    longest = {}
    for p in prompts:
        key = (p.query.id, p.query.variant)
        longest[key] = max(longest.get(key, 0), len(eng.encode(p.prefix)))
    assert eng.stats.prefix_tokens <= sum(longest.values())


def _nested_prefixes(eng, lengths):
    """Token prefixes of one long demonstration text (so they nest token for token)."""
    task = get_task("parity")
    text = (
        task.instruction
        + "\n\n"
        + "".join(task.render_demo(d) + "\n\n" for d in task.generate("clean", 4, 4))
    )
    base = eng.encode(text)
    assert len(base) > max(lengths)
    return [tuple(base[:n]) for n in lengths]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_packed_logits_equal_full_forwards(arch, attn, tiny_model_factory, tiny_tokenizer):
    """Suffixes laid back to back after the longest of several nested prefixes, under the
    packed mask, compute what each whole sequence computes alone."""
    model = tiny_model_factory(arch, len(tiny_tokenizer), attn_implementation=attn)
    eng = Engine(model, tiny_tokenizer)
    assert eng.pack
    prefixes = _nested_prefixes(eng, [40, 3, 61, 40])
    task = get_task("parity")
    suffixes = [eng.encode(task.render_query(e)) for e in task.generate("misleading", 4, 4)]
    suffixes[1] = suffixes[1][:4]
    with torch.inference_mode():
        cache, ids, pos, rows, slot_row, plen, ends = eng.kv.pack_inputs(prefixes, suffixes)
        got = model(
            input_ids=ids[None],
            attention_mask=eng.kv.pack_mask(rows, slot_row, plen),
            position_ids=pos[None],
            **{cache_keyword(model): cache},
        ).logits[0]
        for r, (p, s) in enumerate(zip(prefixes, suffixes)):
            want = model(input_ids=torch.tensor([list(p) + list(s)])).logits[0, -len(s) :]
            torch.testing.assert_close(got[rows == r], want, atol=1e-4, rtol=1e-4)
        # the stored prefix cache is untouched by the packed forward
        assert eng.kv.prefixes[prefixes[2]].get_seq_length() == 61


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_equals_batched(arch, attn, tiny_model_factory, tiny_tokenizer):
    """Generation and log-likelihoods in the packed layout equal the padded batched layout
    (itself checked against plain ``generate`` above), for shared and per-query prompts."""
    model = tiny_model_factory(arch, len(tiny_tokenizer), attn_implementation=attn)
    for mode in ("shared", "per-query"):
        prompts = _prompts("boolean", shots=(0, 1, 3), n=3, mode=mode)
        texts, hints = [p.text for p in prompts], [p.prefix for p in prompts]
        packed = Engine(model, tiny_tokenizer, batch_size=5, max_new_tokens=6, pack=True)
        batched = Engine(model, tiny_tokenizer, batch_size=5, max_new_tokens=6, pack=False)
        assert packed.generate(texts, hints) == batched.generate(texts, hints)
        assert packed.stats.packed_batches > 0 and batched.stats.packed_batches == 0
        assert packed.stats.padded_tokens == 0
        conts = [[" True", " False"]] * len(prompts)
        for a, b in zip(packed.loglik(texts, conts, hints), batched.loglik(texts, conts, hints)):
            assert a == pytest.approx(b, abs=1e-4)


def test_packing_needs_a_mask_the_model_honours(tiny_models, tiny_tokenizer):
    # a sliding window counts cache slots, which packing does not keep equal to positions
    assert not Engine(tiny_models["gemma3"], tiny_tokenizer).pack
    with pytest.raises(ValueError, match="packed layout"):
        Engine(tiny_models["gemma3"], tiny_tokenizer, pack=True)
    # a family not known to take a 4-D mask as given keeps the padded layout
    model = tiny_models["llama"]
    kind = model.config.model_type
    try:
        model.config.model_type = "bloom"
        assert not Engine(model, tiny_tokenizer).pack
    finally:
        model.config.model_type = kind


def test_sliding_window_knows_gpt_neo_local_attention():
    from types import SimpleNamespace

    from transformers import GPTNeoConfig

    cfg = GPTNeoConfig(num_layers=2, attention_types=[[["global", "local"], 1]], window_size=32)
    assert sliding_window(SimpleNamespace(config=cfg)) == 32
    cfg = GPTNeoConfig(num_layers=2, attention_types=[[["global"], 2]])
    assert sliding_window(SimpleNamespace(config=cfg)) is None


def _teacher_forced(model, tok, prompt: str, cont: str) -> float:
    """Log-probability of ``cont`` after ``prompt`` from one plain forward of the whole text:
    the tokens after the prompt's encoding, or after the first token that differs from it
    where the continuation merges with the prompt's last token."""
    ctx, whole = tok(prompt)["input_ids"], tok(prompt + cont)["input_ids"]
    start = len(ctx)
    if len(whole) <= len(ctx) or whole[: len(ctx)] != ctx:
        start = next((i for i, (a, b) in enumerate(zip(whole, ctx)) if a != b), len(ctx))
        start = min(start, len(whole) - 1)
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(start, len(whole)))


# candidates of one and several tokens (the several-token ones run as branches)
_CANDS = [" True", " False", " True and False", " not"]
_LAYOUTS = [
    (a, lay) for a in ARCHS for lay in ("packed", "padded") if (a, lay) != ("gemma3", "packed")
]


@pytest.mark.parametrize("arch,layout", _LAYOUTS)
@pytest.mark.parametrize("mode", ["shared", "per-query"])
def test_shared_query_loglik_equals_whole_sequence_path(
    arch, layout, mode, tiny_models, tiny_tokenizer
):
    """Every candidate scored on one run of its prompt (trunk, then the candidates as branches
    or as per-candidate extensions of the prompt's cache) equals the path that runs prompt +
    candidate whole, and a plain teacher-forced forward; the prompt's tokens run once."""
    model = tiny_models[arch]
    prompts = _prompts("boolean", shots=(0, 2, 4), n=3, mode=mode)
    texts, hints = [p.text for p in prompts], [p.prefix for p in prompts]
    conts = [_CANDS] * len(prompts)
    eng = Engine(model, tiny_tokenizer, batch_size=5, pack=layout == "packed")
    got = eng.loglik(texts, conts, hints)
    ref_eng = Engine(model, tiny_tokenizer, batch_size=5, share_queries=False)
    ref = ref_eng.loglik(texts, conts, hints)
    for a, b in zip(got, ref):
        assert a == pytest.approx(b, abs=1e-4)
    for t, row in list(zip(texts, got))[::4]:
        for c, score in zip(_CANDS, row):
            assert score == pytest.approx(_teacher_forced(model, tiny_tokenizer, t, c), abs=1e-4)
    ctx_tokens = sum(len(eng.encode(t)) for t in texts)
    assert eng.stats.loglik_fallbacks == 0
    assert (eng.stats.packed_batches > 0) == (layout == "packed")
    # each prompt's tokens are computed at most once (prefix caches cover the shared part) ...
    assert eng.stats.prefix_tokens + eng.stats.suffix_tokens <= ctx_tokens
    # ... and only the candidates' tokens before their last run on top
    n_branch = sum(len(eng.encode(t + c)) - len(eng.encode(t)) - 1 for t in texts for c in _CANDS)
    assert n_branch > 0 and eng.stats.branch_tokens == n_branch
    assert ref_eng.stats.suffix_tokens > 2 * eng.stats.suffix_tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_loglik_candidates_merging_with_the_prompt_fall_back(arch, tiny_models, tiny_tokenizer):
    """A candidate whose first token merges with the prompt's last (" Tr" + "ue" encodes as
    " True") is scored on its own whole sequence, from the first token that differs; its
    prompt's other candidates still share the prompt's run."""
    model = tiny_models[arch]
    prompts = _prompts("boolean", shots=(0, 2), n=2)
    texts, hints = [p.text + " Tr" for p in prompts], [p.prefix for p in prompts]
    cands = ["ue", " or True", "ue and False", " True"]
    eng = Engine(model, tiny_tokenizer, batch_size=4)
    got = eng.loglik(texts, [cands] * len(texts), hints)
    merging = [
        c
        for c in cands
        if eng.encode(texts[0] + c)[: len(eng.encode(texts[0]))] != eng.encode(texts[0])
    ]
    assert 0 < len(merging) < len(cands)  # both paths are exercised within each prompt
    assert eng.stats.loglik_fallbacks == len(merging) * len(texts)
    assert eng.stats.branch_tokens > 0
    ref = Engine(model, tiny_tokenizer, batch_size=4, share_queries=False)
    for a, b in zip(got, ref.loglik(texts, [cands] * len(texts), hints)):
        assert a == pytest.approx(b, abs=1e-4)
    for t, row in zip(texts, got):
        for c, score in zip(cands, row):
            assert score == pytest.approx(_teacher_forced(model, tiny_tokenizer, t, c), abs=1e-4)
