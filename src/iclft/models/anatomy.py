"""One anatomy per architecture family: where a causal LM's parts live, and hooks on them.

This is the only module of iclft that names module paths (``model.layers``, ``k_proj``,
``query_key_value`` ...). Fine-tuning (which parameters K/V-only training moves, LoRA's default
targets, layer-causal GD's early exits), the ICL engine (whether the packed layout is safe),
model loading (which attention implementation ``auto`` picks) and the analysis (capture,
patching, circuits, similarity) all ask a :class:`Family` or an :class:`Anatomy`.

Places have names, never paths:

* components (what patching scores): ``L{l}.H{h}`` (head h's output: its slice of the input of
  the attention output projection), ``L{l}.ATTN`` (the attention block's output: the output
  projection's output, before any post-norm and the residual add), ``L{l}.MLP`` (the MLP's
  output, before any post-norm and the residual add) and ``L{l}.RESID`` (the residual stream
  after block l);
* sites (where a hook sits): ``L{l}.HEADS`` (all heads of layer l together), ``L{l}.ATTN``,
  ``L{l}.MLP``, ``L{l}.RESID``. A head is a slice of its layer's ``HEADS`` site.

Why plain PyTorch hooks: every supported family exposes every site as a module boundary (the
heads are the input of the output projection, so a forward *pre*-hook sees them), hooks compose
with the model's own forward (masks, rotary embeddings, key/value caches, sliding windows stay
the model's), and they need nothing beyond torch. TransformerLens re-implements each
architecture (and would need its weight conversion for GGUF-loaded models) and nnsight is not
installed; neither would add a site we cannot reach here. Every hook is registered inside a
context manager and removed in ``finally``, so a forward that raises leaves the model clean.

Queries and keys (for the SimAM attention scores) are read where the family finishes them
before its rotary embedding, in the family's layout, and rotated with the family's own
``apply_rotary_pos_emb`` (from its transformers modeling module, so partial rotary dimensions,
as in Pythia and Phi-3, are the model's).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
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
#: attention implementations a user may ask for; ``auto`` picks per family (:func:`attention_for`)
ATTN_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")

Edit = Callable[[torch.Tensor], torch.Tensor | None]
"""A hook body: gets a site's activation ``[batch, pos, features]``; returns a replacement or
``None`` to leave it (and may keep a reference to read it)."""


# --------------------------------------------------------------------------------------------
# Names


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


# --------------------------------------------------------------------------------------------
# Families

#: what every family below supports (the family table test runs each on every family)
CAPABILITIES = (
    "ICL engine (generate, loglik)",
    "full / LoRA / K/V-only / layer-causal fine-tuning",
    "capture",
    "exact and attribution patching",
    "circuits",
    "similarity (SimAOU, SimAM, ...)",
)

#: layouts of a fused q|k|v projection's output features
QKV_LAYOUTS = ("concat", "per_head")
#: where a per-head q/k norm's output sits: ``flat`` [B, T, n*d] (before the head split),
#: ``bthd`` [B, T, n, d] (split, not yet transposed), ``bhtd`` [B, n, T, d]
QK_NORM_LAYOUTS = ("flat", "bthd", "bhtd")


@dataclass(frozen=True)
class Family:
    """The anatomy of one architecture family: attribute paths and the facts that go with them.

    Paths are dotted attribute paths: ``layers``, ``final_norm`` from the causal LM (candidates,
    the first that exists wins); ``attn``, ``mlp`` from a block; ``out_proj``, ``q``/``k``/``v``,
    ``qkv``, ``q_norm``/``k_norm`` from the attention module.
    """

    name: str
    model_types: tuple[str, ...]
    examples: str  # checkpoints of this family, for `iclft models families`
    layers: tuple[str, ...]
    final_norm: tuple[str, ...]
    attn: str
    out_proj: str
    mlp: str
    lora_targets: tuple[str, ...]
    q: str | None = None  # separate projections
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # one fused q|k|v projection ...
    qkv_layout: str = "concat"  # ... laid out [q | k | v] or per head [q_h k_h v_h] ...
    q_norm: str | None = None  # a norm on q/k after the projection (where q/k are read)
    k_norm: str | None = None
    qk_norm_layout: str = "bhtd"
    rope: bool = True
    scaling: float | None = None  # score scale; ``None``: the attention module's ``scaling``
    # the family's forward takes positions from ``position_ids`` and a prepared 4-D mask as
    # given (transformers' ``create_causal_mask`` returns a 4-D mask untouched), so the engine's
    # packed layout computes what each prompt computes alone (the family table test checks it;
    # ALiBi-style models that build their bias from a 2-D mask would not)
    packable: bool = False
    sdpa: bool = True  # transformers has an sdpa path for the family
    block_returns_tuple: bool = False  # a block returns ``(hidden, ...)`` rather than ``hidden``
    notes: str = ""

    @property
    def kv_kind(self) -> str:
        """How K/V-only training selects keys and values: separate modules or a masked slice."""
        if self.qkv is None:
            return "separate k, v"
        return "fused q|k|v, per-head slices" if self.qkv_layout == "per_head" else "fused q|k|v"


_LLAMA_PROJ = dict(q="q_proj", k="k_proj", v="v_proj", out_proj="o_proj", attn="self_attn")
_LLAMA_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DECODER = dict(layers=("model.layers",), final_norm=("model.norm",), mlp="mlp")

FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        ("llama",),
        "Llama 2/3, SmolLM2 (smollm2-135m)",
        **_DECODER,
        **_LLAMA_PROJ,
        lora_targets=_LLAMA_LORA,
        packable=True,
    ),
    Family(
        "mistral",
        ("mistral",),
        "Mistral 7B",
        **_DECODER,
        **_LLAMA_PROJ,
        lora_targets=_LLAMA_LORA,
        packable=True,
        notes="sliding-window checkpoints use the padded layout",
    ),
    Family(
        "qwen2",
        ("qwen2",),
        "Qwen1.5 (0.5B, 1.8B, 7B), Qwen2, Qwen2.5",
        **_DECODER,
        **_LLAMA_PROJ,
        lora_targets=_LLAMA_LORA,
        packable=True,
    ),
    Family(
        "qwen3",
        ("qwen3",),
        "Qwen3",
        **_DECODER,
        **_LLAMA_PROJ,
        q_norm="q_norm",
        k_norm="k_norm",
        qk_norm_layout="bthd",
        lora_targets=_LLAMA_LORA,
        packable=True,
    ),
    Family(
        "gemma",
        ("gemma",),
        "Gemma 2B/7B",
        **_DECODER,
        **_LLAMA_PROJ,
        lora_targets=_LLAMA_LORA,
        packable=True,
    ),
    Family(
        "gemma2",
        ("gemma2",),
        "Gemma 2",
        **_DECODER,
        **_LLAMA_PROJ,
        lora_targets=_LLAMA_LORA,
        sdpa=False,
        notes="attention and final logit soft-capping; sliding-window layers (padded layout)",
    ),
    Family(
        "gemma3",
        ("gemma3", "gemma3_text"),
        "Gemma 3 (gemma3-270m)",
        layers=("model.layers", "model.language_model.layers"),
        final_norm=("model.norm", "model.language_model.norm"),
        mlp="mlp",
        **_LLAMA_PROJ,
        q_norm="q_norm",
        k_norm="k_norm",
        qk_norm_layout="bhtd",
        lora_targets=_LLAMA_LORA,
        notes="sliding-window layers (padded layout)",
    ),
    Family(
        "olmo2",
        ("olmo2",),
        "OLMo 2",
        **_DECODER,
        **_LLAMA_PROJ,
        q_norm="q_norm",
        k_norm="k_norm",
        qk_norm_layout="flat",
        lora_targets=_LLAMA_LORA,
        packable=True,
        notes="norms after attention and MLP (ATTN/MLP sites are before them)",
    ),
    Family(
        "smollm3",
        ("smollm3",),
        "SmolLM3",
        **_DECODER,
        **_LLAMA_PROJ,
        lora_targets=_LLAMA_LORA,
        packable=True,
        notes="some layers without rotary embeddings",
    ),
    Family(
        "phi3",
        ("phi3",),
        "Phi-3",
        **_DECODER,
        attn="self_attn",
        out_proj="o_proj",
        qkv="qkv_proj",
        qkv_layout="concat",
        lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        packable=True,
        notes="fused q|k|v; partial rotary",
    ),
    Family(
        "gpt2",
        ("gpt2",),
        "GPT-2",
        layers=("transformer.h",),
        final_norm=("transformer.ln_f",),
        attn="attn",
        out_proj="c_proj",
        mlp="mlp",
        qkv="c_attn",
        qkv_layout="concat",
        rope=False,
        lora_targets=("c_attn", "c_proj", "c_fc"),
        packable=True,
        notes="fused q|k|v (Conv1D); learned positions",
    ),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        "Pythia (1.4B ...), GPT-NeoX",
        layers=("gpt_neox.layers",),
        final_norm=("gpt_neox.final_layer_norm",),
        attn="attention",
        out_proj="dense",
        mlp="mlp",
        qkv="query_key_value",
        qkv_layout="per_head",
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        packable=True,
        notes="fused q|k|v laid out per head; partial rotary; parallel residual",
    ),
    Family(
        "gpt_neo",
        ("gpt_neo",),
        "GPT-Neo (1.3B ...)",
        layers=("transformer.h",),
        final_norm=("transformer.ln_f",),
        attn="attn.attention",
        out_proj="out_proj",
        mlp="mlp",
        q="q_proj",
        k="k_proj",
        v="v_proj",
        rope=False,
        scaling=1.0,
        sdpa=False,
        block_returns_tuple=True,
        lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"),
        notes="unscaled attention scores; local-attention layers (padded layout)",
    ),
)
_BY_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}


def family_names() -> list[str]:
    return [f.name for f in FAMILIES]


def known_family(model_type: str | None) -> Family | None:
    """The family of a ``config.model_type``, or ``None``."""
    return _BY_TYPE.get(model_type or "")


def packable_families() -> list[str]:
    return [f.name for f in FAMILIES if f.packable]


def family_for(model_type: str | None) -> Family:
    """The family of a ``config.model_type``; an unsupported one raises a UserError naming the
    supported families."""
    fam = _BY_TYPE.get(model_type or "")
    if fam is None:
        raise UserError(
            f"model type {model_type!r} is not a supported architecture family; supported: "
            f"{', '.join(family_names())} (see `iclft models families`)"
        )
    return fam


def family_of(model: nn.Module) -> Family:
    return family_for(getattr(_base(model).config, "model_type", None))


def attention_for(model_type: str | None, requested: str = "auto") -> str:
    """The attention implementation to load: ``auto`` is sdpa where the family has it, else
    eager (Gemma 2: sdpa cannot soft-cap; GPT-Neo: no sdpa path). None of iclft's analyses
    reads the kernel's attention probabilities (SimAM recomputes the scores from the queries and
    keys), so no analysis forces eager. An explicit choice is kept."""
    if requested not in ATTN_CHOICES:
        raise UserError(
            f"attention implementation {requested!r} is not allowed; allowed: "
            f"{', '.join(ATTN_CHOICES)}"
        )
    family = family_for(model_type)
    if requested == "sdpa" and not family.sdpa:
        raise UserError(
            f"{family.name} models have no sdpa attention in transformers; use --attn auto "
            "(eager for this family) or --attn eager"
        )
    if requested != "auto":
        return requested
    return "sdpa" if family.sdpa else "eager"


# --------------------------------------------------------------------------------------------
# Anatomy of one loaded model


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(obj: Any, paths: Sequence[str], what: str) -> Any:
    for path in paths:
        with contextlib.suppress(AttributeError):
            return _get(obj, path)
    raise UserError(f"{type(obj).__name__} has no {what} at any of {', '.join(paths)}")


def _base(model: nn.Module) -> nn.Module:
    """The causal LM inside DistributedDataParallel and peft wrappers."""
    model = getattr(model, "module", model)
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


@functools.cache
def _cache_keyword(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_keyword(model: nn.Module) -> str:
    """The keyword a model's ``forward`` takes its key/value cache by: ``cache`` from
    transformers 5.25 on (``past_key_values`` then warns on every call, and goes in 5.40),
    ``past_key_values`` before. Read from the causal LM's own signature (a peft or DDP wrapper
    passes keywords through)."""
    return _cache_keyword(type(_base(model)))


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections), which stores weights ``[in, out]``."""
    return hasattr(module, "nf")


@dataclass(frozen=True)
class KVProjection:
    """Where a layer's keys and values are made. For a fused q|k|v projection ``k`` and ``v``
    are the same module and ``k_cols``/``v_cols`` index its output features."""

    k: nn.Module
    v: nn.Module
    k_cols: torch.Tensor | None = None
    v_cols: torch.Tensor | None = None


@dataclass(frozen=True)
class KVParameter:
    """A parameter K/V-only training moves. ``keep`` (fused projections): the output features
    that are keys or values; the gradient of every other feature (the queries) is zeroed along
    ``axis``, the parameter's output-feature axis."""

    name: str
    param: nn.Parameter
    keep: torch.Tensor | None = None
    axis: int = 0


def _out_axis(module: nn.Module, param_name: str) -> int:
    """Output-feature axis of a projection's parameter: 0 for ``nn.Linear`` weights and every
    bias, 1 for the weight of transformers' ``Conv1D`` (stored ``[in, out]``, GPT-2)."""
    return 1 if param_name == "weight" and is_conv1d(module) else 0


class Anatomy:
    """The places of one loaded model. Build with :func:`anatomy`."""

    def __init__(self, model: nn.Module, family: Family):
        self.model, self.family = model, family
        base = _base(model)
        self.arch = family.name
        cfg = getattr(base.config, "text_config", None) or base.config
        self.config = cfg
        self.blocks: Sequence[nn.Module] = _first(base, family.layers, "decoder layers")
        self._final_norm: nn.Module = _first(base, family.final_norm, "final norm")
        self.n_layers = len(self.blocks)
        attn = self.attention(0)
        self.n_heads = int(
            getattr(cfg, "num_attention_heads", None)
            or getattr(cfg, "n_head", None)
            or cfg.num_heads
        )
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
        head_dim = getattr(attn, "head_dim", None) or getattr(attn, "head_size", None)
        self.head_dim = int(head_dim or self.d_model // self.n_heads)
        self.final_softcap: float | None = getattr(cfg, "final_logit_softcapping", None)

    # ----- modules --------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.blocks[layer]

    def attention(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.family.attn)

    def out_proj(self, layer: int) -> nn.Module:
        return _get(self.attention(layer), self.family.out_proj)

    def mlp(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.family.mlp)

    def embedding(self) -> nn.Module:
        return _base(self.model).get_input_embeddings()

    def final_norm(self) -> nn.Module:
        return self._final_norm

    def unembedding(self) -> nn.Module:
        return _base(self.model).get_output_embeddings()

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from a residual stream: the model's final norm, unembedding and final logit
        soft-cap (Gemma 2), as its own head applies them."""
        logits = self.unembedding()(self._final_norm(hidden))
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def fused_columns(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) output-feature indices of the fused q|k|v projection."""
        H, Hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        if self.family.qkv_layout == "per_head":  # [h0: q k v | h1: q k v | ...]
            base = torch.arange(H).repeat_interleave(d) * 3 * d + torch.arange(d).repeat(H)
            return base, base + d, base + 2 * d
        return (
            torch.arange(H * d),
            torch.arange(H * d, (H + Hkv) * d),
            torch.arange((H + Hkv) * d, (H + 2 * Hkv) * d),
        )

    def kv_projections(self, layer: int) -> KVProjection:
        """The K and V projections of ``layer`` (what K/V-only fine-tuning trains)."""
        attn, fam = self.attention(layer), self.family
        if fam.qkv is not None:
            fused = _get(attn, fam.qkv)
            _, k, v = self.fused_columns()
            return KVProjection(fused, fused, k, v)
        return KVProjection(_get(attn, fam.k), _get(attn, fam.v))

    def kv_parameters(self) -> list[KVParameter]:
        """Every parameter that makes keys or values, named as in ``self.model``."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        out: list[KVParameter] = []
        for layer in range(self.n_layers):
            kv = self.kv_projections(layer)
            if kv.k_cols is not None:
                keep = torch.cat([kv.k_cols, kv.v_cols])
                for pname, p in kv.k.named_parameters(recurse=False):
                    out.append(KVParameter(names[id(p)], p, keep, _out_axis(kv.k, pname)))
            else:
                for module in (kv.k, kv.v):
                    out += [KVParameter(names[id(p)], p) for p in module.parameters()]
        return out

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
        as_tuple = self.family.block_returns_tuple
        try:
            for layer, hidden in layers.items():
                block = self.block(layer)

                def forward(*args: Any, _h: torch.Tensor = hidden, **kwargs: Any) -> Any:
                    return (_h, None) if as_tuple else _h

                block.forward = forward  # instance attribute shadows the class method
                patched.append(block)
            yield
        finally:
            for block in patched:
                del block.forward

    @contextlib.contextmanager
    def detached_blocks(self, outputs: list[torch.Tensor]) -> Iterator[None]:
        """Each block's incoming hidden state is detached (its parameters get gradient only
        through its own output); each block's output hidden state is appended to ``outputs``."""

        def pre(_mod, args, kwargs):
            if args:
                args = (args[0].detach(), *args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}
            return args, kwargs

        def post(_mod, _args, output):
            outputs.append(output[0] if isinstance(output, tuple) else output)

        handles = []
        try:
            for block in self.blocks:
                handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(block.register_forward_hook(post))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def qk_hooks(self, layers: Sequence[int], out: dict[int, dict[str, Any]]) -> Iterator[None]:
        """During forwards inside the block, ``out[layer]`` gets ``q`` ``[B, heads, T, d]`` and
        ``k`` ``[B, kv_heads, T, d]`` as the family finishes them before its rotary embedding,
        and ``rope``, the ``(cos, sin)`` tables the model passed to the attention module."""
        fam = self.family
        H, Hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qc, kc, _ = self.fused_columns() if fam.qkv is not None else (None, None, None)

        def heads(x: torch.Tensor, n: int, layout: str = "flat") -> torch.Tensor:
            if layout == "bhtd":
                return x
            if layout == "flat":
                x = x.view(*x.shape[:2], n, d)
            return x.transpose(1, 2)  # [B, T, n, d] -> [B, n, T, d]

        handles = []
        try:
            for layer in layers:
                attn = self.attention(layer)
                slot = out.setdefault(layer, {})

                def pre(module, args, kwargs, _slot=slot):
                    _slot["rope"] = kwargs.get("position_embeddings")

                handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
                if fam.qkv is not None:

                    def fused(module, args, output, _slot=slot):
                        _slot["q"] = heads(output[..., qc], H)
                        _slot["k"] = heads(output[..., kc], Hkv)

                    handles.append(_get(attn, fam.qkv).register_forward_hook(fused))
                    continue
                if fam.q_norm is not None:
                    named = ((fam.q_norm, "q", H), (fam.k_norm, "k", Hkv))
                    layout = fam.qk_norm_layout
                else:
                    named = ((fam.q, "q", H), (fam.k, "k", Hkv))
                    layout = "flat"
                for name, key, n in named:

                    def read(module, args, output, _slot=slot, _key=key, _n=n, _lay=layout):
                        _slot[_key] = heads(output, _n, _lay)

                    handles.append(_get(attn, name).register_forward_hook(read))
            yield
        finally:
            for h in handles:
                h.remove()

    def rotate(self, layer: int, q: torch.Tensor, k: torch.Tensor, rope: Any):
        """``q``, ``k`` after the layer's rotary embedding, as the family applies it."""
        attn = self.attention(layer)
        if not self.family.rope or not getattr(attn, "use_rope", True) or rope is None:
            return q, k
        cos, sin = rope
        return sys.modules[type(attn).__module__].apply_rotary_pos_emb(q, k, cos, sin)

    def score_scale(self, layer: int) -> tuple[float, float | None]:
        """(scaling, soft-cap) the layer's attention applies to ``q . k``."""
        attn = self.attention(layer)
        scaling = self.family.scaling
        if scaling is None:
            scaling = float(getattr(attn, "scaling", None) or self.head_dim**-0.5)
        return scaling, getattr(attn, "attn_logit_softcapping", None)


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
    """The :class:`Anatomy` of a causal LM (also inside peft or DDP wrappers); an unsupported
    architecture raises a UserError naming the supported families."""
    return Anatomy(model, family_of(model))
