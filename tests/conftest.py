"""Shared fixtures: tiny randomly initialised models of several architectures and a small
byte-level BPE tokenizer trained on task text, all built here so tests need no download."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ARCHS = ("llama", "qwen2", "gemma3", "gpt2")


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from iclft.tasks import get_task, task_names

    texts = []
    for name in task_names():
        t = get_task(name)
        texts.append(t.instruction)
        for v in ("clean", "misleading"):
            texts += [t.render_demo(e) for e in t.generate(v, 40, seed=123)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.pad_token = fast.eos_token
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _train_tokenizer()


def make_tiny_model(
    arch: str, vocab_size: int, seed: int = 0, attn_implementation: str = "auto", **overrides
):
    """A 2-layer model of the given architecture, random weights from ``seed``, fp32, eval."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    with_head_dim = {**llama_like, "head_dim": 8}
    configs = {
        "llama": (tf.LlamaConfig, llama_like),
        "mistral": (tf.MistralConfig, {**llama_like, "sliding_window": None}),
        "qwen2": (tf.Qwen2Config, llama_like),
        "qwen3": (tf.Qwen3Config, with_head_dim),
        "gemma": (tf.GemmaConfig, with_head_dim),
        "gemma2": (
            tf.Gemma2Config,
            {
                **with_head_dim,
                "sliding_window": 64,
                "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0,
            },
        ),
        "gemma3": (
            tf.Gemma3TextConfig,
            {
                **with_head_dim,
                "sliding_window": 64,
                "layer_types": ["sliding_attention", "full_attention"],
            },
        ),
        "olmo2": (tf.Olmo2Config, {**llama_like, "pad_token_id": 0}),
        "smollm3": (tf.SmolLM3Config, {**llama_like, "pad_token_id": 0, "no_rope_layers": [1, 0]}),
        "phi3": (tf.Phi3Config, {**llama_like, "pad_token_id": 0, "partial_rotary_factor": 0.5}),
        "gpt2": (tf.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=1024)),
        # Pythia's family: fused q|k|v laid out per head, partial rotary
        "gpt_neox": (
            tf.GPTNeoXConfig,
            dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=1024,
                rotary_pct=0.5,
            ),
        ),
        # GPT-Neo: a global and a local-attention layer (window in cache slots)
        "gpt_neo": (
            tf.GPTNeoConfig,
            dict(
                hidden_size=32,
                intermediate_size=64,
                num_layers=2,
                num_heads=4,
                attention_types=[[["global", "local"], 1]],
                window_size=256,
                max_position_embeddings=1024,
            ),
        ),
    }
    cls, kwargs = configs[arch]
    kwargs = {**kwargs, "vocab_size": vocab_size}
    for k, v in overrides.items():  # gpt2 names its context n_positions
        kwargs["n_positions" if arch == "gpt2" and k == "max_position_embeddings" else k] = v
    cfg = cls(**kwargs)
    torch.manual_seed(seed)
    if attn_implementation == "auto":
        from iclft.models.anatomy import attention_for

        attn_implementation = attention_for(cfg.model_type)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    return model.float().eval()


@pytest.fixture(scope="session")
def tiny_models(tiny_tokenizer):
    n = len(tiny_tokenizer)
    return {a: make_tiny_model(a, n) for a in ARCHS}


@pytest.fixture(scope="session")
def tiny_model_factory():
    """``make_tiny_model`` for tests that need a model with their own settings."""
    return make_tiny_model


def _hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="session")
def hooks_left():
    """``hooks_left(model)``: forward hooks and pre-hooks still registered anywhere in it."""
    return _hooks_left


@pytest.fixture
def iclft_main(monkeypatch, capsys):
    """Run ``iclft ARGS...`` in-process through the real entry point (``iclft.cli.main``, which
    turns user errors into one red line and their exit code); returns (exit code, stderr)."""
    import sys

    from iclft.cli import main

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["iclft", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main()
        code = info.value.code
        return (code if isinstance(code, int) else 1), capsys.readouterr().err

    return run
