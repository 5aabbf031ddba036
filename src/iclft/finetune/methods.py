"""Fine-tuning methods: one small strategy object per method, in one registry.

* ``full``: every parameter.
* ``kv``: only the key and value projections (the protocol of Dai et al. and Deutch et al.).
  Where a family has separate key and value projections they are unfrozen; where it fuses
  q|k|v into one projection (GPT-2, Phi-3, Pythia) that projection is unfrozen with a gradient
  mask that zeroes its query features, so only K and V move (weight decay is then disabled, as
  it would move Q). The anatomy (:mod:`iclft.models.anatomy`) says which is which.
* ``lora``: peft LoRA adapters on the family's attention and MLP projections by default; saved
  as an adapter, the others as a full model.
* ``layer-causal``: layer-causal GD (:mod:`iclft.finetune.layer_causal`) on the parameters one
  of the three above selects (``params``): it changes the loss and freezes the readout.

Each strategy says which parameters train (:meth:`Method.select`), how the loss is computed
(:meth:`Method.loss`), whether weight decay must be off and how the final model is saved. The
Trainer (:mod:`iclft.finetune.train`) and the in-memory SGD (:mod:`iclft.finetune.gd`) both use
them. This module imports torch only when a strategy runs, so the names below are cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from iclft.errors import UnknownNameError, UserError
from iclft.records import FT_METHODS, FULL, LAYER_CAUSAL, LORA
from iclft.records import KV as KV_

if TYPE_CHECKING:
    import torch
    from torch import nn

    from iclft.models.anatomy import KVParameter


class MethodSettings(Protocol):
    """What a strategy reads of the training settings (:class:`iclft.finetune.config.
    TrainingSettings` has them; named here so that this module does not import the settings,
    which import these names)."""

    lora_targets: list[str] | None
    lora_rank: int
    lora_alpha: float
    lora_dropout: float


def default_lora_targets(model_type: str, module_names: Iterable[str]) -> list[str]:
    """The family's attention and MLP projections (those the model has)."""
    from iclft.models.anatomy import family_for

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
    from iclft.models.anatomy import anatomy

    return anatomy(model).kv_parameters()


def kv_is_masked(model: nn.Module) -> bool:
    """Whether K/V-only training of ``model`` masks part of a fused projection."""
    return any(p.keep is not None for p in kv_parameters(model))


def _mask_other_features(kv: KVParameter) -> None:
    """Zero the gradient of every output feature of a fused projection that is not K or V."""
    import torch

    drop = torch.ones(kv.param.shape[kv.axis], dtype=torch.bool)
    drop[kv.keep] = False

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        index = [slice(None)] * grad.dim()
        index[kv.axis] = drop.to(grad.device)
        grad[tuple(index)] = 0
        return grad

    kv.param.register_hook(hook)


class Method:
    """A fine-tuning method. ``name`` is its name in ``--method``; ``parameters`` names the
    parameter set it trains (the manifest's ``parameters``)."""

    name: str
    parameters: str
    #: the final model and checkpoints are a peft adapter naming its base, not full weights
    saves_adapter = False

    def check(self, meta: nn.Module, settings: MethodSettings) -> None:
        """Refuse settings the architecture cannot take, on a weightless (meta) copy."""

    def select(self, model: nn.Module, settings: MethodSettings, seed: int = 0) -> nn.Module:
        """Mark the parameters that train (or wrap the model); return the model to train."""
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor | None:
        """The training loss of a batch; ``None``: the model's own (next-token cross-entropy)."""
        return None

    def decay_off(self, model: nn.Module) -> bool:
        """Whether weight decay must be off (it would move parameters meant to stay)."""
        return False

    def save(self, model: nn.Module, directory: Path, base_spec: str) -> None:
        """Write the trained model (safetensors) into ``directory``."""
        model.save_pretrained(str(directory), safe_serialization=True)


def _train_only(model: nn.Module, trainable: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(trainable)


class Full(Method):
    name = parameters = FULL

    def select(self, model, settings, seed=0):
        _train_only(model, True)
        return model


class KV(Method):
    name = parameters = KV_

    def select(self, model, settings, seed=0):
        _train_only(model, False)
        for kv in kv_parameters(model):
            kv.param.requires_grad_(True)
            if kv.keep is not None:
                _mask_other_features(kv)
        return model

    def decay_off(self, model):
        return kv_is_masked(model)  # decay would move the masked query features


class Lora(Method):
    name = parameters = LORA
    saves_adapter = True

    def _targets(self, model: nn.Module, settings: MethodSettings) -> list[str]:
        names = [n for n, _ in model.named_modules()]
        if settings.lora_targets:
            check_lora_targets(settings.lora_targets, names)
            return settings.lora_targets
        return default_lora_targets(model.config.model_type, names)

    def check(self, meta, settings):
        self._targets(meta, settings)

    def select(self, model, settings, seed=0):
        import torch
        from peft import LoraConfig, get_peft_model

        from iclft.models.anatomy import is_conv1d

        targets = self._targets(model, settings)
        lcfg = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=targets,
            # Conv1D stores [in, out]: peft would set this itself, with a warning
            fan_in_fan_out=any(
                is_conv1d(m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets
            ),
            task_type="CAUSAL_LM",
        )
        # peft draws LoRA's initial A matrices from torch's global generator: seed it here, in a
        # forked RNG state, so the adapter depends on the run's seed and nothing that ran before
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return get_peft_model(model, lcfg)

    def save(self, model, directory, base_spec):
        model.peft_config["default"].base_model_name_or_path = base_spec
        # embeddings are never LoRA targets here; "auto" would look the base up on a hub
        model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)


class LayerCausal(Method):
    """Layer-causal GD on the parameters ``inner`` selects: the sum of every layer's early-exit
    loss, the readout (final norm, unembedding) frozen."""

    name = LAYER_CAUSAL

    def __init__(self, inner: Method):
        self.inner = inner
        self.parameters = inner.parameters
        self.saves_adapter = inner.saves_adapter

    def check(self, meta, settings):
        self.inner.check(meta, settings)

    def select(self, model, settings, seed=0):
        from iclft.finetune.layer_causal import freeze_readout

        model = self.inner.select(model, settings, seed)
        freeze_readout(model)
        return model

    def loss(self, model, inputs, num_items_in_batch=None):
        from iclft.finetune.layer_causal import layer_causal_loss

        return layer_causal_loss(
            model,
            inputs["input_ids"],
            inputs.get("attention_mask"),
            inputs["labels"],
            num_items_in_batch,
        )

    def decay_off(self, model):
        return self.inner.decay_off(model)

    def save(self, model, directory, base_spec):
        self.inner.save(model, directory, base_spec)


#: the parameter selections, by name (``--params`` of layer-causal takes any of them)
PARAMETER_SETS: dict[str, Method] = {m.name: m for m in (Full(), KV(), Lora())}
PARAM_SET_NAMES = tuple(PARAMETER_SETS)
#: every ``--method``: the parameter selections, and layer-causal GD on one of them (the
#: names' home is :data:`iclft.records.FT_METHODS`; every one has its strategy here)
METHOD_NAMES = (*PARAM_SET_NAMES, LayerCausal.name)
assert METHOD_NAMES == FT_METHODS, (METHOD_NAMES, FT_METHODS)


def get_method(name: str, params: str | None = None) -> Method:
    """The strategy of method ``name`` (``params``: the parameters layer-causal GD trains)."""
    if name == LayerCausal.name:
        if params not in PARAMETER_SETS:
            raise UnknownNameError("parameter set", params, PARAM_SET_NAMES)
        return LayerCausal(PARAMETER_SETS[params])
    if name not in PARAMETER_SETS:
        raise UnknownNameError("method", name, METHOD_NAMES)
    return PARAMETER_SETS[name]


def trainable_count(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
