"""The stop rule and the two scoring protocols, on a real (tiny) Llama whose weights are set by
hand so that its greedy continuation of any prompt is known: after any token it writes a
newline, after a newline "5", after "5" a newline, i.e. "\\n5\\n5\\n..." (a model that puts its
answer on the next line, as the embedded models do at 0 shots)."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, StoppingCriteriaList

from iclft.icl.decode import NewlineStop, finished
from iclft.icl.engine import Engine
from iclft.icl.evaluate import EvalSpec, evaluate_task
from iclft.icl.prompts import build_prompt
from iclft.tasks import get_task


def _bigram(tok, factory, default: str, after: dict[str, str]):
    """A bigram Llama: one-hot embeddings, every block's output zeroed (the residual stream is
    the embedding), and an unembedding that maps token t to the row of f(t): ``after[t]``,
    else ``default`` (byte-level token names: "Ċ" is a newline, "Ġ" a space)."""
    vocab = len(tok)
    model = factory(
        "llama", vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        tie_word_embeddings=False,
    )  # fmt: skip
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        nxt = torch.full((vocab,), tok.convert_tokens_to_ids(default))
        for t, n in after.items():
            nxt[tok.convert_tokens_to_ids(t)] = tok.convert_tokens_to_ids(n)
        head = torch.zeros(vocab, vocab)
        head[nxt, torch.arange(vocab)] = 1.0
        model.lm_head.weight.copy_(head)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id)
    return model


@pytest.fixture(scope="module")
def next_line_model(tiny_tokenizer, tiny_model_factory):
    """Writes "\n5\n5\n...": a newline after any token, "5" after a newline."""
    tok = tiny_tokenizer
    assert tok.decode(tok.convert_tokens_to_ids(["Ċ", "5"])) == "\n5"
    return _bigram(tok, tiny_model_factory, "Ċ", {"Ċ": "5"})


@pytest.fixture(scope="module")
def spaced_model(tiny_tokenizer, tiny_model_factory):
    """Writes " 123\n 123...": a lone space token first, as a tokenizer that splits the space
    from the digits after our answer lead does (smollm2, Qwen)."""
    tok = tiny_tokenizer
    assert tok.decode(tok.convert_tokens_to_ids(["Ġ", "1", "2", "3", "Ċ"])) == " 123\n"
    after = {"Ġ": "1", "1": "2", "2": "3", "3": "Ċ"}
    return _bigram(tok, tiny_model_factory, "Ġ", after)


def test_finished_skips_leading_whitespace():
    assert not finished("\n", "newline") and not finished(" \n\t\n", "newline")
    assert finished("\n5\n", "newline") and finished("5\n", "newline")
    assert not finished("\n5", "newline") and not finished("\n5\n", "none")


@pytest.mark.parametrize("demos", ["shared", "per-query"])  # packed and padded layouts
def test_an_answer_on_the_next_line_is_read_not_scored_empty(
    next_line_model, tiny_tokenizer, demos
):
    eng = Engine(next_line_model, tiny_tokenizer, batch_size=8, max_new_tokens=8)
    task = get_task("code")  # clean item 16 of seed 0 has the target 5
    spec = EvalSpec(tasks=("code",), variants=("clean",), shots=(0, 2), n=20, demos=demos)
    out = evaluate_task(eng, task, spec, model_label="bigram")
    for p in out.predictions:
        assert p.output == "\n5\n"  # stopped at the newline after the answer, not before
        assert p.prediction == "5"
        assert p.correct == (p.target == "5")
    assert any(p.target == "5" for p in out.predictions)  # the test can tell the difference


def test_the_engine_stops_where_plain_generate_with_newline_stop_does(
    next_line_model, tiny_tokenizer
):
    task = get_task("parity")
    prompt = build_prompt(task, task.generate("clean", 1, 0)[0], [], 0).text
    ids = tiny_tokenizer(prompt, return_tensors="pt").input_ids
    n = ids.shape[1]
    ref = next_line_model.generate(
        ids,
        max_new_tokens=8,
        do_sample=False,
        stopping_criteria=StoppingCriteriaList([NewlineStop(tiny_tokenizer, n)]),
    )
    expected = tiny_tokenizer.decode(ref[0, n:])
    assert expected == "\n5\n"
    assert Engine(next_line_model, tiny_tokenizer).generate([prompt], max_new_tokens=8) == [
        expected
    ]


def test_the_paper_protocol_is_a_fixed_continuation_scored_by_substring(
    next_line_model, tiny_tokenizer
):
    eng = Engine(next_line_model, tiny_tokenizer, batch_size=8)
    spec = EvalSpec(
        tasks=("expression",), variants=("clean",), shots=(0,), n=12, max_new_tokens=6,
        protocol="paper",
    )  # fmt: skip
    out = evaluate_task(eng, get_task("expression"), spec, model_label="bigram")
    for p in out.predictions:
        assert p.output == "\n5\n"  # the seed's 3 tokens for expression (not 6), no stop
        assert p.correct == (p.target in p.output or p.prediction == p.target)
    row = out.results[0]
    assert row.protocol == "paper" and row.max_new_tokens == 3
    assert row.accuracy == sum(p.correct for p in out.predictions) / 12
    boolean = EvalSpec(tasks=("boolean",), shots=(0,), n=2, scoring="auto", protocol="paper")
    res = evaluate_task(eng, get_task("boolean"), boolean, model_label="bigram")
    assert {r.scoring for r in res.results} == {"generate"}  # the paper generated for all


@pytest.mark.parametrize("shots", [0, 2])  # padded and packed layouts
def test_the_paper_budget_counts_from_the_answer_not_a_lone_leading_space(
    spaced_model, tiny_tokenizer, shots
):
    # the seed's prompts end with the space before the answer, ours leave it to the answer:
    # a lone first space token does not count, so code's 2 tokens read "12", not "1"
    eng = Engine(spaced_model, tiny_tokenizer, batch_size=8)
    for task, budget, expected in [("code", 2, " 12"), ("expression", 3, " 123"),
                                   ("boolean", 1, " 1")]:  # fmt: skip
        spec = EvalSpec(tasks=(task,), variants=("clean",), shots=(shots,), n=3, protocol="paper")
        out = evaluate_task(eng, get_task(task), spec, model_label="bigram")
        assert {p.output for p in out.predictions} == {expected}
        assert out.results[0].max_new_tokens == budget
    # every token counts under "none", and a non-space first token counts under "budget"
    prompt = build_prompt(get_task("code"), get_task("code").generate("clean", 1, 0)[0], [], 0)
    assert eng.generate([prompt.text], max_new_tokens=2, stop="none") == [" 1"]
    assert eng.generate([prompt.text + " "], max_new_tokens=2, stop="budget") == ["12"]


def test_unknown_protocol_and_loglik_with_the_paper_protocol_are_refused(iclft_main, tmp_path):
    code, err = iclft_main("eval", "--task", "boolean", "--protocol", "papr", "-o", str(tmp_path))
    assert code == 2 and "unknown protocol 'papr' (did you mean 'paper'?)" in err
    code, err = iclft_main(
        "eval", "--task", "boolean", "--protocol", "paper", "--scoring", "loglik", "-o",
        str(tmp_path),
    )  # fmt: skip
    assert code == 2 and "paper protocol generates text for every task" in err
