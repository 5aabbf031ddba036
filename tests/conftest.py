"""Shared fixtures: tiny randomly initialised models of several architectures and a small
byte-level BPE tokenizer trained on task text, all built here so tests need no download."""

from __future__ import annotations

import os

import pytest
import torch

from models.models_tiny import make_tiny_model

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


@pytest.fixture(autouse=True)
def _logging_as_iclft_sets_it():
    """Each test starts with iclft's warning filters (pytest resets filters per test) and ends
    with whatever an in-process ``iclft`` command configured undone (its handlers hold the
    test's captured stderr)."""
    from iclft import logs

    env = {k: os.environ.get(k) for k in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    logs.filter_known_warnings()
    yield
    logs.reset()
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _train_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tiny_tokenizer):
    n = len(tiny_tokenizer)
    return {a: make_tiny_model(a, n) for a in ARCHS}


@pytest.fixture(scope="session")
def tiny_model_factory():
    """``make_tiny_model`` for tests that need a model with their own settings."""
    return make_tiny_model


@pytest.fixture(scope="session")
def save_tiny(tiny_tokenizer):
    """``save_tiny(directory, arch="llama", seed=0, **config)``: a tiny random model and the
    task tokenizer saved as a model directory (safetensors), as a user's local model is."""

    def save(directory, arch: str = "llama", seed: int = 0, **overrides):
        model = make_tiny_model(arch, len(tiny_tokenizer), seed=seed, **overrides)
        model.save_pretrained(directory)
        tiny_tokenizer.save_pretrained(directory)
        return directory

    return save


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
