"""Where the parts of a transformer live, per architecture, and hooks that read or replace them.

Everything outside this module names places, never module paths:

* components (what patching scores): ``L{l}.H{h}`` (head h's output: its slice of the input of
  the attention output projection), ``L{l}.ATTN`` (the attention block's output: the output
  projection's output, before any post-norm and the residual add), ``L{l}.MLP`` (the MLP's
  output, before any post-norm and the residual add) and ``L{l}.RESID`` (the residual stream
  after block l);
* sites (where a hook sits): ``L{l}.HEADS`` (all heads of layer l together), ``L{l}.ATTN``,
  ``L{l}.MLP``, ``L{l}.RESID``. A head is a slice of its layer's ``HEADS`` site.

Why plain PyTorch hooks: the four supported families expose every site as a module boundary
(the heads are the input of ``o_proj``/``c_proj``, so a forward *pre*-hook sees them), hooks
compose with the model's own forward (masks, rotary embeddings, key/value caches, sliding
windows stay the model's), and they need nothing beyond torch. TransformerLens re-implements
each architecture (and would need its weight conversion for GGUF-loaded models) and nnsight
is not installed; neither would add a site we cannot reach here. Every hook is registered
inside a context manager and removed in ``finally``, so a forward that raises leaves the model
clean.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from iclft.errors import UserError

#: site kinds: ``heads`` is the input of the attention output projection, the rest are outputs
SITE_KINDS = ("heads", "attn", "mlp", "resid")
#: component kinds; a ``head`` component is a slice of its layer's ``heads`` site
COMPONENT_KINDS = ("head", "attn", "mlp", "resid")

Edit = Callable[[torch.Tensor], torch.Tensor | None]
"""A hook body: gets a site's activation ``[batch, pos, features]``; returns a replacement or
``None`` to leave it (and may keep a reference to read it)."""


@dataclass(frozen=True, order=True)
class Site:
    """A hook point: ``L3.HEADS``, ``L3.ATTN``, ``L3.MLP``, ``L3.RESID``."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"L{self.layer}.{self.kind.upper()}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, order=True)
class Component:
    """A patchable unit: ``L3.H5`` (head 5 of layer 3), ``L3.ATTN``, ``L3.MLP``, ``L3.RESID``."""

    layer: int
    kind: str
    head: int = -1

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}.H{self.head}"
        return f"L{self.layer}.{self.kind.upper()}"

    @property
    def site(self) -> Site:
        return Site(self.layer, "heads" if self.kind == "head" else self.kind)

    def __str__(self) -> str:
        return self.name


_COMPONENT_RE = re.compile(r"^L(\d+)\.(?:H(\d+)|(ATTN|MLP|RESID))$")


def parse_component(name: str) -> Component:
    """``"L3.H5"`` -> ``Component(3, "head", 5)``; ``"L2.MLP"`` -> ``Component(2, "mlp")``."""
    m = _COMPONENT_RE.match(name.strip())
    if m is None:
        raise UserError(
            f"bad component name {name!r}; expected L<layer>.H<head>, "
            "L<layer>.ATTN, L<layer>.MLP or L<layer>.RESID"
        )
    layer = int(m.group(1))
    if m.group(2) is not None:
        return Component(layer, "head", int(m.group(2)))
    return Component(layer, m.group(3).lower())


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths of one architecture family (relative to the block / attention module)."""

    layers: tuple[str, ...]  # candidate dotted paths from the CausalLM to its list of blocks
    attn: str  # block -> attention module (returns ``(output, weights)``)
    out_proj: str  # attention -> output projection; its input is the heads, concatenated
    mlp: str  # block -> MLP
    q: str | None = None  # attention -> separate projections
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # attention -> fused q|k|v projection (GPT-2's c_attn)
    q_norm: str | None = None  # attention -> per-head norm applied to q/k before RoPE
    k_norm: str | None = None
    rope: bool = True
    embed: str = "model.embed_tokens"


_LLAMA = ArchSpec(
    layers=("model.layers",),
    attn="self_attn",
    out_proj="o_proj",
    mlp="mlp",
    q="q_proj",
    k="k_proj",
    v="v_proj",
)
_GEMMA3 = ArchSpec(
    layers=("model.layers", "model.language_model.layers"),
    attn="self_attn",
    out_proj="o_proj",
    mlp="mlp",
    q="q_proj",
    k="k_proj",
    v="v_proj",
    q_norm="q_norm",
    k_norm="k_norm",
)
_GPT2 = ArchSpec(
    layers=("transformer.h",),
    attn="attn",
    out_proj="c_proj",
    mlp="mlp",
    qkv="c_attn",
    rope=False,
    embed="transformer.wte",
)
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "gemma3": _GEMMA3,
    "gemma3_text": _GEMMA3,
    "gpt2": _GPT2,
}
SUPPORTED = ("llama", "qwen2", "gemma3", "gpt2")


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class KVProjection:
    """Where a layer's keys and values are made. For a fused q|k|v projection (GPT-2) ``k`` and
    ``v`` are the same module and ``k_cols``/``v_cols`` select their output features."""

    k: nn.Module
    v: nn.Module
    k_cols: slice | None = None
    v_cols: slice | None = None


class Anatomy:
    """The places of one loaded model. Build with :func:`anatomy`."""

    def __init__(self, model: nn.Module, arch: str, spec: ArchSpec):
        self.model, self.arch, self.spec = model, arch, spec
        cfg = getattr(model.config, "text_config", None) or model.config
        self.config = cfg
        blocks = None
        for path in spec.layers:
            with contextlib.suppress(AttributeError):
                blocks = _get(model, path)
                break
        if blocks is None:
            raise UserError(f"{type(model).__name__} ({arch}) has none of {spec.layers}")
        self.blocks: Sequence[nn.Module] = blocks
        self.n_layers = len(blocks)
        attn = self.attention(0)
        self.n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(attn.head_dim)
        self.d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    # ----- modules --------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.blocks[layer]

    def attention(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.attn)

    def out_proj(self, layer: int) -> nn.Module:
        return _get(self.attention(layer), self.spec.out_proj)

    def mlp(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.mlp)

    def embedding(self) -> nn.Module:
        return _get(self.model, self.spec.embed)

    def kv_projections(self, layer: int) -> KVProjection:
        """The K and V projections of ``layer`` (what K/V-only fine-tuning trains)."""
        attn = self.attention(layer)
        if self.spec.qkv is not None:
            fused = _get(attn, self.spec.qkv)
            d = self.n_heads * self.head_dim
            dkv = self.n_kv_heads * self.head_dim
            return KVProjection(fused, fused, slice(d, d + dkv), slice(d + dkv, d + 2 * dkv))
        return KVProjection(_get(attn, self.spec.k), _get(attn, self.spec.v))

    # ----- names ----------------------------------------------------------------------
    def components(self, kinds: Sequence[str] = ("head", "mlp", "resid")) -> list[Component]:
        """Every component of the given kinds, layer by layer (heads first within a layer)."""
        bad = [k for k in kinds if k not in COMPONENT_KINDS]
        if bad:
            raise UserError(f"unknown component kinds {bad}; allowed: {', '.join(COMPONENT_KINDS)}")
        out: list[Component] = []
        for layer in range(self.n_layers):
            for kind in COMPONENT_KINDS:
                if kind not in kinds:
                    continue
                if kind == "head":
                    out += [Component(layer, "head", h) for h in range(self.n_heads)]
                else:
                    out.append(Component(layer, kind))
        return out

    def check(self, component: Component) -> Component:
        ok = 0 <= component.layer < self.n_layers and (
            component.kind != "head" or 0 <= component.head < self.n_heads
        )
        if not ok:
            raise UserError(
                f"component {component.name} does not exist in this model "
                f"({self.n_layers} layers x {self.n_heads} heads)"
            )
        return component

    def features(self, component: Component) -> slice:
        """The feature slice of ``component`` within its site's activation."""
        if component.kind == "head":
            h, d = component.head, self.head_dim
            return slice(h * d, (h + 1) * d)
        return slice(None)

    # ----- hooks ----------------------------------------------------------------------
    def site_module(self, site: Site) -> tuple[nn.Module, bool]:
        """``(module, is_pre)``: the module whose input (pre) or output (post) is the site."""
        if site.kind == "heads":
            return self.out_proj(site.layer), True
        if site.kind == "attn":
            return self.attention(site.layer), False
        if site.kind == "mlp":
            return self.mlp(site.layer), False
        if site.kind == "resid":
            return self.block(site.layer), False
        raise UserError(f"unknown site kind {site.kind!r}; allowed: {', '.join(SITE_KINDS)}")

    @contextlib.contextmanager
    def hooks(self, edits: Mapping[Site, Edit]) -> Iterator[None]:
        """Run ``edits[site](activation)`` at each site during forwards inside the block; a
        returned tensor replaces the activation. Hooks are removed on exit, even on error."""
        handles: list[Any] = []
        try:
            for site, fn in edits.items():
                module, is_pre = self.site_module(site)
                if is_pre:
                    handles.append(
                        module.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True)
                    )
                else:
                    handles.append(module.register_forward_hook(_post_hook(fn)))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def replay(self, layers: Mapping[int, torch.Tensor]) -> Iterator[None]:
        """Skip the blocks in ``layers``: each returns the given residual stream instead of
        computing it (used to start a forward at a layer from a cached run). Restored on exit."""
        patched: list[nn.Module] = []
        try:
            for layer, hidden in layers.items():
                block = self.block(layer)

                def forward(*args: Any, _h: torch.Tensor = hidden, **kwargs: Any) -> torch.Tensor:
                    return _h

                block.forward = forward  # instance attribute shadows the class method
                patched.append(block)
            yield
        finally:
            for block in patched:
                del block.forward


def _pre_hook(fn: Edit) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = next(iter(kwargs))
        new = fn(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return hook


def _post_hook(fn: Edit) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            new = fn(output[0])
            return None if new is None else (new, *output[1:])
        return fn(output)

    return hook


def anatomy(model: nn.Module) -> Anatomy:
    """The :class:`Anatomy` of a causal LM; unsupported architectures raise a UserError."""
    cfg = model.config
    arch = getattr(cfg, "model_type", None)
    if arch not in ARCHITECTURES:
        raise UserError(
            f"architecture {arch!r} ({type(model).__name__}) is not supported by the analysis "
            f"tools; supported: {', '.join(SUPPORTED)}"
        )
    return Anatomy(model, arch, ARCHITECTURES[arch])
