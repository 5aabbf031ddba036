"""Which parameters a fine-tuning method updates: one small strategy per method.

* ``full``: every parameter.
* ``kv``: only the key and value projections (the protocol of Dai et al. and Deutch et al.).
  Separate ``k_proj``/``v_proj`` modules (llama, qwen2, gemma3, mistral, gpt-neo ...) are
  unfrozen; GPT-2's fused ``c_attn`` is unfrozen with a gradient mask that zeroes its query
  third, so only K and V move (weight decay is then disabled, as it would move Q).
* ``lora``: peft LoRA adapters on the attention and MLP projections by default.

Layer-causal GD (:mod:`iclft.finetune.layer_causal`) changes the loss, not the selection, and
combines with any of the three.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from iclft.errors import UserError

LORA_DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
}
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def default_lora_targets(model_type: str, module_names: Iterable[str]) -> list[str]:
    """The attention and MLP projections of the architecture."""
    names = {n.rsplit(".", 1)[-1] for n in module_names}
    targets = LORA_DEFAULT_TARGETS.get(model_type, _LLAMA_LIKE)
    found = [t for t in targets if t in names]
    if not found:
        raise UserError(
            f"no default LoRA target modules for model type {model_type!r}; "
            "pass --lora-targets with module names of the model"
        )
    return found


def check_lora_targets(targets: list[str], module_names: Iterable[str]) -> None:
    names = {n.rsplit(".", 1)[-1] for n in module_names}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n in module_names if n} - {""})
        raise UserError(
            f"LoRA target module(s) {', '.join(missing)} not found in the model; "
            f"its modules include: {', '.join(x for x in linear if not x.isdigit())}"
        )


def kv_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that hold key/value projections."""
    names = [
        n
        for n, _ in model.named_parameters()
        if any(f".{m}." in f".{n}" for m in ("k_proj", "v_proj", "c_attn"))
    ]
    if not names:
        raise UserError(
            "K/V-only training needs separate k_proj/v_proj modules (llama, qwen2, gemma3, "
            "mistral, gpt-neo) or GPT-2's fused c_attn; this model has neither"
        )
    return names


def _mask_query_third(param: nn.Parameter, n_embd: int) -> None:
    """GPT-2's c_attn produces [q | k | v] along its last dim: zero the gradient of q."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[..., :n_embd] = 0
        return grad

    param.register_hook(hook)


def select_parameters(model: nn.Module, selection: str, cfg) -> nn.Module:
    """Freeze/unfreeze (or wrap with LoRA) according to ``selection``; return the model."""
    if selection == "lora":
        from peft import LoraConfig, get_peft_model

        names = [n for n, _ in model.named_modules()]
        targets = cfg.lora.target_modules or default_lora_targets(model.config.model_type, names)
        check_lora_targets(targets, names)
        lcfg = LoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        # peft draws LoRA's initial A matrices from torch's global generator: seed it here, in a
        # forked RNG state, so the adapter depends on the run's seed and nothing that ran before
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(getattr(cfg, "seed", 0)))
            return get_peft_model(model, lcfg)
    for p in model.parameters():
        p.requires_grad_(selection == "full")
    if selection == "kv":
        kv = set(kv_parameter_names(model))
        n_embd = getattr(model.config, "n_embd", None)
        for n, p in model.named_parameters():
            if n in kv:
                p.requires_grad_(True)
                if n.split(".")[-2] == "c_attn" and n_embd:
                    _mask_query_third(p, n_embd)
    elif selection != "full":
        raise UserError(f"unknown parameter selection {selection!r}; allowed: full, kv, lora")
    return model


def trainable_count(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
