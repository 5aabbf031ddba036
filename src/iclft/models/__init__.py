"""Models: the alias registry, the fetch-once cache, and loading any alias, directory or hub id.

Typical use::

    from iclft.models import load_model
    lm = load_model("smollm2-135m", device="auto", dtype="auto")
    lm.model, lm.tokenizer, lm.resolved.weights_sha256

Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

from iclft.models.cache import (
    CacheCheck,
    CacheMarker,
    alias_dir,
    cache_root,
    check_cache,
    ensure_alias,
    fetch_alias,
)
from iclft.models.loading import (
    AliasStatus,
    LoadedModel,
    ResolvedModel,
    UnknownModelError,
    load_model,
    model_status,
    resolve_device,
    resolve_dtype,
    resolve_model,
    weights_sha256,
)
from iclft.models.registry import ALIASES, DEFAULT_MODEL, AliasSpec, alias_names, get_alias

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "AliasSpec",
    "AliasStatus",
    "CacheCheck",
    "CacheMarker",
    "LoadedModel",
    "ResolvedModel",
    "UnknownModelError",
    "alias_dir",
    "alias_names",
    "cache_root",
    "check_cache",
    "ensure_alias",
    "fetch_alias",
    "get_alias",
    "load_model",
    "model_status",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "weights_sha256",
]
