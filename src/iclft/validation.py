"""What every settings model refuses: unknown keys, non-finite floats and floats no float32 holds.

:class:`Strict` is the base of the experiment configuration (:mod:`iclft.config`) and of the
fine-tuning settings (:mod:`iclft.finetune.config`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

#: the largest float32: a learning rate, decay or alpha above it overflows in the update
FLOAT32_MAX = 3.4028234663852886e38


def float32_range(v):
    """Refuse a float no float32 holds (NaN/inf are refused by ``allow_inf_nan=False``)."""
    if isinstance(v, float) and abs(v) > FLOAT32_MAX:
        raise ValueError(f"must be at most 3.4e38 in magnitude (float32), got {v:g}")
    return v


class Strict(BaseModel):
    """Unknown keys, non-finite floats (``.inf``, ``.nan``) and floats beyond float32 are
    refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _float32 = field_validator("*")(float32_range)
