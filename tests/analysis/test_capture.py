from __future__ import annotations

import pytest
import torch
from capture_reference import attention_outputs, attention_scores

from iclft.analysis.capture import capture, capture_qk
from iclft.models.anatomy import Site, anatomy


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_last_position_helpers(arch, tiny_models, tiny_tokenizer):
    an = anatomy(tiny_models[arch])
    ids = torch.tensor([tiny_tokenizer("True and False or True")["input_ids"]] * 2)
    h = attention_outputs(an, input_ids=ids)
    assert h.shape == (2, 2, 32)
    attn = capture(an, [Site(1, "attn")], input_ids=ids)[Site(1, "attn")]
    torch.testing.assert_close(h[1], attn[:, -1])
    keys = [1, 2, 3]
    m = attention_scores(an, keys, input_ids=ids)
    assert m.shape == (2, 2, 4, 3)
    full = capture_qk(an, input_ids=ids)[0].scores()
    torch.testing.assert_close(m[0], full[:, :, -1, keys])
