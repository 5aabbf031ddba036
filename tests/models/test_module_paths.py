"""One home for module paths: only ``iclft/models/anatomy.py`` may name a model's modules."""

from __future__ import annotations

import re
from pathlib import Path

import iclft

#: module and attribute paths of the supported families (and a few more common ones)
MODULE_PATH_NAMES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "c_proj", "c_fc",
    "query_key_value", "dense_h_to_4h", "dense_4h_to_h", "gate_proj", "up_proj", "down_proj",
    "gate_up_proj", "out_proj", "lm_head", "embed_out", "embed_tokens", "embed_in", "wte", "wpe",
    "ln_f", "final_layer_norm", "input_layernorm", "post_attention_layernorm", "self_attn",
    "q_norm", "k_norm", "transformer.h", "model.layers", "gpt_neox.layers", "model.norm",
    "language_model.layers",
)  # fmt: skip
_PATTERN = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, MODULE_PATH_NAMES)) + r")\b")
HOME = Path(iclft.__file__).parent / "models" / "anatomy.py"


def test_no_module_path_outside_the_anatomy():
    root = Path(iclft.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == HOME:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _PATTERN.search(line):
                found.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not found, "module paths outside models/anatomy.py:\n" + "\n".join(found)


def test_the_pattern_finds_what_it_should():
    assert _PATTERN.search('getattr(attn, "k_proj")')
    assert _PATTERN.search("model.transformer.h[0]")
    assert _PATTERN.search("self.model.layers")
    assert _PATTERN.search("m.lm_head.weight")
    assert not _PATTERN.search("my_k_proj_count")
    assert _PATTERN.search("``query_key_value``")
    assert _PATTERN.search(HOME.read_text())  # the home itself does name them
