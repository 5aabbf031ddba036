"""Helpers for the analysis tests: pairs tokenised with the tiny tokenizer."""

from __future__ import annotations

import pytest

from iclft.analysis.pairs import make_pairs
from iclft.analysis.patching import encode_pair, tokenizes_alike


@pytest.fixture(scope="session")
def token_pairs(tiny_tokenizer):
    """``task -> [TokenPair]``, zero-shot (the query starts after the instruction line)."""
    out = {}
    for task in ("parity", "code", "boolean"):
        pairs = make_pairs(task, 2, seed=0, shots=0, same_length=tokenizes_alike(tiny_tokenizer))
        out[task] = [encode_pair(tiny_tokenizer, p) for p in pairs]
    return out
