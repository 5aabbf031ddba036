"""Which parameters a fine-tuning method updates: one small strategy per method.

* ``full``: every parameter.
* ``kv``: only the key and value projections (the protocol of Dai et al. and Deutch et al.).
  Where a family has separate key and value projections they are unfrozen; where it fuses
  q|k|v into one projection (GPT-2, Phi-3, Pythia) that projection is unfrozen with a gradient
  mask that zeroes its query features, so only K and V move (weight decay is then disabled, as
  it would move Q). The anatomy (:mod:`iclft.models.anatomy`) says which is which.
* ``lora``: peft LoRA adapters on the family's attention and MLP projections by default.

Layer-causal GD (:mod:`iclft.finetune.layer_causal`) changes the loss, not the selection, and
combines with any of the three.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from iclft.errors import UserError
from iclft.models.anatomy import KVParameter, anatomy, family_for


def default_lora_targets(model_type: str, module_names: Iterable[str]) -> list[str]:
    """The family's attention and MLP projections (those the model has)."""
    names = {n.rsplit(".", 1)[-1] for n in module_names}
    found = [t for t in family_for(model_type).lora_targets if t in names]
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


def kv_parameters(model: nn.Module) -> list[KVParameter]:
    """The parameters that make keys and values, with the feature mask of fused ones."""
    return anatomy(model).kv_parameters()


def kv_is_masked(model: nn.Module) -> bool:
    """Whether K/V-only training of ``model`` masks part of a fused projection."""
    return any(p.keep is not None for p in kv_parameters(model))


def _mask_other_features(kv: KVParameter) -> None:
    """Zero the gradient of every output feature of a fused projection that is not K or V."""
    drop = torch.ones(kv.param.shape[kv.axis], dtype=torch.bool)
    drop[kv.keep] = False

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        index = [slice(None)] * grad.dim()
        index[kv.axis] = drop.to(grad.device)
        grad[tuple(index)] = 0
        return grad

    kv.param.register_hook(hook)


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
        for kv in kv_parameters(model):
            kv.param.requires_grad_(True)
            if kv.keep is not None:
                _mask_other_features(kv)
    elif selection != "full":
        raise UserError(f"unknown parameter selection {selection!r}; allowed: full, kv, lora")
    return model


def trainable_count(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
