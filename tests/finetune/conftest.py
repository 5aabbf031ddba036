from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, save_tiny):
    """A tiny llama saved as a model directory (safetensors + tokenizer)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), seed=3)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer, tiny_model_factory):
    d = tmp_path_factory.mktemp("tiny-gpt2")
    model = tiny_model_factory("gpt2", len(tiny_tokenizer), seed=4)
    model.config.eos_token_id = model.config.bos_token_id = tiny_tokenizer.eos_token_id
    model.save_pretrained(d, safe_serialization=True)
    tiny_tokenizer.save_pretrained(d)
    return d
