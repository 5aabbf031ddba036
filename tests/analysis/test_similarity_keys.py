"""SimAM's key boundary against the reference's rule computed by hand, and the layers SimAM
averages over.

The reference (LMOps ``understand_icl``) encodes the context (BOS, demonstrations, each ending
with its separator) and the query separately and concatenates them; ``c_len`` is the context's
length, so the keys ``attn_map[:, :, -1, c_len:]`` are exactly the query's own tokens. Here the
tokenizer is trained on whole prompts, so it merges the separator ``\\n\\n`` into one token when
it ends the prefix alone, but splits it into two ``\\n`` tokens before the query (the GPT-2
pre-tokenizer keeps the last whitespace before a word apart), as SmolLM2's does."""

from __future__ import annotations

import pytest
import torch

from iclft.analysis.settings import SimilaritySpec
from iclft.analysis.similarity import (
    choose_queries,
    layer0_icl_change,
    measure_similarity,
    record,
    simam_layers,
)
from iclft.analysis.similarity_metrics import simam_delta
from iclft.models import LoadedModel, ResolvedModel

TASK, SHOTS, N, SEED, LR = "boolean", 2, 3, 0, 0.05


@pytest.fixture(scope="module")
def prompt_tokenizer():
    """A byte-level BPE trained on prompts (instruction, separator, demonstrations)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from iclft.icl.prompts import build_prompt
    from iclft.tasks import get_task

    task = get_task(TASK)
    items = task.generate("clean", 60, seed=123)
    prompts = [build_prompt(task, q, items[:3], 3) for q in items[3:]]
    # whole prompts, and prefixes (which end with the separator: "\n\n" then becomes a merge)
    texts = [p.text + " " + p.query.target for p in prompts] + [p.prefix for p in prompts]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.pad_token = fast.eos_token
    return fast


def _hand_keys(tok, text: str, prefix: str) -> list[int]:
    """The reference's rule by hand: the query encoded on its own is what follows c_len."""
    n_all = len(tok(text)["input_ids"])
    n_query = len(tok(text[len(prefix) :], add_special_tokens=False)["input_ids"])
    return list(range(n_all - n_query, n_all))


def test_reference_keys_are_the_query_tokens_without_the_separator(prompt_tokenizer):
    tok = prompt_tokenizer
    ref, _ = choose_queries(tok, TASK, SHOTS, N, SEED, keys="reference")
    old, _ = choose_queries(tok, TASK, SHOTS, N, SEED, keys="query+separator")
    assert [q.id for q in ref] == [q.id for q in old]  # the same queries either way
    for q, o in zip(ref, old):
        for text, prefix, ids, keys, old_keys in (
            (q.zsl_text, q.zsl_prefix, q.zsl_ids, q.zsl_keys, o.zsl_keys),
            (q.icl_text, q.icl_prefix, q.icl_ids, q.icl_keys, o.icl_keys),
        ):
            assert list(keys) == _hand_keys(tok, text, prefix)
            # the old boundary adds exactly the separator, split into two "\n" tokens
            extra = [
                tok.convert_ids_to_tokens(ids[k]) for k in old_keys[: len(old_keys) - len(keys)]
            ]
            assert extra == ["Ċ", "Ċ"] and list(old_keys[2:]) == list(keys)
            assert tok.convert_ids_to_tokens(tok(prefix)["input_ids"])[-1] == "ĊĊ"
        assert [q.zsl_ids[k] for k in q.zsl_keys] == [q.icl_ids[k] for k in q.icl_keys]


def _loaded(model, tok) -> LoadedModel:
    resolved = ResolvedModel(spec="tiny", kind="local", path=None)
    return LoadedModel(model, tok, resolved, torch.device("cpu"), torch.float32)


def test_simam_delta_matches_a_hand_computation_on_the_reference_keys(
    prompt_tokenizer, tiny_model_factory
):
    """SimAM_Δ(GD) of the pipeline equals cos(m_ICL - m_ZSL, m_FT - m_ZSL) computed from
    every score of an independent capture, sliced at the hand-computed keys, averaged over
    heads, queries and layers 1.. (the model is rotary), for both key sets."""
    from capture_reference import attention_scores

    from iclft.finetune.gd import sgd_on_demonstrations
    from iclft.models.anatomy import anatomy

    tok = prompt_tokenizer
    model = tiny_model_factory("llama", len(tok), seed=4, num_hidden_layers=3)
    ft = sgd_on_demonstrations(model, tok, TASK, SHOTS, SEED, LR, master=True)
    values = {}
    for keys in ("reference", "query+separator"):
        spec = SimilaritySpec(task=TASK, shots=SHOTS, n=N, lr=LR, seed=SEED, keys=keys,
                              random_draws=1, untrained=False, n_boot=0)  # fmt: skip
        report = measure_similarity(spec, _loaded(model, tok))
        assert report.simam_layers == [1, 2]
        queries, _ = choose_queries(tok, TASK, SHOTS, N, SEED, keys=keys)
        per_query = []
        for q in queries:
            m = {}
            for name, mod, ids, text, prefix in (
                ("zsl", model, q.zsl_ids, q.zsl_text, q.zsl_prefix),
                ("icl", model, q.icl_ids, q.icl_text, q.icl_prefix),
                ("ft", ft, q.zsl_ids, q.zsl_text, q.zsl_prefix),
            ):
                every = attention_scores(anatomy(mod), input_ids=torch.tensor([ids]))[:, 0]
                hand = _hand_keys(tok, text, prefix)
                if keys == "query+separator":
                    hand = [hand[0] - 2, hand[0] - 1, *hand]
                m[name] = every[..., hand]  # [L, H, K]
            per_query.append(simam_delta(m["zsl"], m["icl"], m["ft"]).mean(-1))  # [L]
        by_layer = torch.stack(per_query).mean(0)
        got = report.metrics["trained"]["simam_delta"]["gd"]
        assert got["value"] == pytest.approx(float(by_layer[1:].mean()), abs=2e-6)
        assert got["per_layer"][1:] == pytest.approx(by_layer[1:].tolist(), abs=2e-6)
        # layer 0 is the cosine of rounding (another capture path rounds otherwise): left out
        values[keys] = got["value"]
    assert values["reference"] != pytest.approx(values["query+separator"], abs=1e-4)


@pytest.mark.parametrize(("arch", "rope"), [("llama", True), ("qwen2", True), ("gpt2", False)])
def test_layer_zero_is_left_out_exactly_where_icl_cannot_move_it(
    arch, rope, prompt_tokenizer, tiny_model_factory
):
    """Rotary models: ICL changes layer-0 scores to the query's own tokens by rounding only,
    and SimAM leaves layer 0 out; learned absolute positions (GPT-2): ICL moves them, and
    layer 0 stays."""
    from iclft.models.anatomy import anatomy

    tok = prompt_tokenizer
    an = anatomy(tiny_model_factory(arch, len(tok), seed=1))
    assert an.family.rope is rope
    queries, _ = choose_queries(tok, TASK, SHOTS, N, SEED)
    zsl = record(an, queries, False, lambda n: None)
    icl = record(an, queries, True, lambda n: None)
    change = layer0_icl_change(zsl, icl)
    if rope:
        assert change < 1e-4 and simam_layers(an.n_layers, rope) == list(range(1, an.n_layers))
    else:
        assert change > 1e-2 and simam_layers(an.n_layers, rope) == list(range(an.n_layers))
    # layers above 0 see the demonstrations through layer 0's mixing: ICL moves them
    assert all(float((i[1] - z[1]).norm() / z[1].norm()) > 1e-3 for z, i in zip(zsl.m, icl.m))
    assert simam_layers(1, True) == [0]  # a one-layer model keeps its only layer
