"""What every settings model refuses: unknown keys, non-finite floats and floats no float32 holds.

:class:`Strict` is the base of the experiment configuration (:mod:`iclft.config`) and of the
fine-tuning settings (:mod:`iclft.finetune.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from iclft.errors import UserError

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


def load_yaml_file(path: Path) -> Any:
    """Read a YAML settings file; a missing file or a syntax error is one line naming the file
    and, for a syntax error, the line and column where it was found."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {str(path)!r} does not exist")
    if path.is_dir():
        raise UserError(f"config file {str(path)!r} is a directory; give a YAML file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        why = f"{what} {context}" if context else what
        raise UserError(f"{path}{where}: not valid YAML ({why})") from None
