"""Resolving specs, devices and dtypes; loading local models and LoRA adapters."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from iclft.errors import ModelError, UnknownNameError, UserError
from iclft.models.cache import file_sha256
from iclft.models.loading import (
    ResolvedModel,
    UnknownModelError,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_model,
    weights_sha256,
)

# ---------------------------------------------------------------------------------- devices


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_explicit_devices(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match="has 2 CUDA GPUs"):
        resolve_device("cuda:2")


def test_unavailable_or_unknown_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(UnknownNameError, match="allowed: auto, cpu, cuda, cuda:N, mps"):
        resolve_device("gpu")


# ---------------------------------------------------------------------------------- dtypes


def test_dtype_resolution(monkeypatch):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", "mps") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", "cuda:0") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype(torch.float32) == torch.float32


@pytest.mark.parametrize("bad", ["float64", "int8", "fp8", torch.int64])
def test_bad_dtype_lists_allowed(bad):
    with pytest.raises(UnknownNameError, match="allowed: auto, bfloat16, float16, float32"):
        resolve_dtype(bad)


def test_attention_choices(tiny_model_dir):
    with pytest.raises(UnknownNameError, match="allowed: auto, eager, flash_attention_2, sdpa"):
        load_model(str(tiny_model_dir), device="cpu", attn_implementation="flash")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(UserError, match="flash_attn"):
            load_model(str(tiny_model_dir), device="cpu", attn_implementation="flash_attention_2")
    eager = load_model(str(tiny_model_dir), device="cpu", attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"


# ---------------------------------------------------------------------------------- resolving


def test_unknown_spec_lists_aliases():
    with pytest.raises(UnknownModelError) as info:
        resolve_model("smollm2-13m")
    message = str(info.value)
    assert "did you mean 'smollm2-135m'" in message
    assert "gemma3-270m" in message and "smollm2-135m" in message
    assert "local model directory" in message and "Hugging Face id" in message
    assert isinstance(info.value, UserError)


def test_hub_id_without_hub_says_so(monkeypatch):
    import huggingface_hub.constants

    from iclft.models import loading

    monkeypatch.setattr(loading, "_HUB_REACHABLE", {})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as info:
        resolve_model("some-org/some-model-that-is-not-cached")
    message = str(info.value)
    assert "cannot be reached" in message
    assert "smollm2-135m" in message and "gemma3-270m" in message


def test_local_dir_resolves_with_weights_hash(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved == ResolvedModel(
        spec=str(tiny_model_dir),
        kind="local",
        path=tiny_model_dir.resolve(),
        weights_sha256=file_sha256(tiny_model_dir / "model.safetensors"),
    )
    assert resolved.describe()["kind"] == "local"


def test_weights_hash_changes_with_content(tmp_path, tiny_model_dir):
    model = shutil.copytree(tiny_model_dir, tmp_path / "m")
    first = weights_sha256(model)
    assert weights_sha256(model) == first
    (model / "model.safetensors").write_bytes(b"other bytes")
    assert weights_sha256(model) != first


def test_dir_without_model_or_only_bin(tmp_path, tiny_model_dir):
    with pytest.raises(ModelError, match="neither a saved model"):
        resolve_model(str(tmp_path))
    model = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only safetensors"):
        resolve_model(str(model))
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(model / "config.json"))


# ---------------------------------------------------------------------------------- loading


def test_load_local_model(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"
    assert loaded.model.generation_config.pad_token_id == loaded.tokenizer.pad_token_id
    ids = loaded.tokenizer(["hello world"], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = loaded.model(ids).logits
    assert logits.shape == (1, ids.shape[1], loaded.model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_load_in_bfloat16(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.dtype == torch.bfloat16


def _make_adapter(base_dir, out_dir, base_name):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(out_dir)
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_name
    cfg_path.write_text(json.dumps(cfg))
    with torch.no_grad():
        ids = torch.tensor([[3, 5, 7, 11, 13]])
        expected = peft_model.merge_and_unload().eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()(ids).logits
    return ids, expected, plain


def test_lora_adapter_is_loaded_and_merged(tmp_path, tiny_model_dir):
    adapter = tmp_path / "adapter"
    ids, expected, plain = _make_adapter(tiny_model_dir, adapter, str(tiny_model_dir))
    resolved = resolve_model(str(adapter))
    assert resolved.is_adapter and resolved.base_spec == str(tiny_model_dir)
    assert resolved.base is not None and resolved.base.kind == "local"
    assert resolved.weights_sha256 not in (None, resolved.base.weights_sha256)
    loaded = load_model(str(adapter), device="cpu")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"  # merged, no PEFT wrapper
    assert not loaded.model.training
    with torch.no_grad():
        got = loaded.model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)  # the adapter really changed something


def test_adapter_base_relative_to_adapter_dir(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    _make_adapter(tmp_path / "base", tmp_path / "adapter", "../base")
    resolved = resolve_model(str(tmp_path / "adapter"))
    assert resolved.base_spec == str((tmp_path / "base").resolve())


def test_adapter_with_unknown_base(tmp_path, tiny_model_dir):
    _make_adapter(tiny_model_dir, tmp_path / "adapter", "no-such-base-model")
    with pytest.raises(UnknownModelError):
        resolve_model(str(tmp_path / "adapter"))


def test_adapter_on_fake_alias(tmp_path, fetched_alias):
    from iclft.models.cache import alias_dir

    base_dir = alias_dir(fetched_alias.alias)
    ids, expected, _ = _make_adapter(base_dir, tmp_path / "adapter", fetched_alias.alias)
    loaded = load_model(str(tmp_path / "adapter"), device="cpu")
    assert loaded.resolved.base.kind == "alias"
    assert loaded.resolved.base_spec == fetched_alias.alias
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, expected, rtol=1e-4, atol=1e-5)
