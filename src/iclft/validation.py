"""What every settings model refuses: unknown keys, non-finite floats and floats no float32 holds.

:class:`Strict` is the base of the experiment configuration (:mod:`iclft.run.config`) and of the
fine-tuning settings (:mod:`iclft.finetune.config`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from iclft.errors import UserError, did_you_mean

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


class Settings(Strict):
    """A pipeline's settings (evaluation, circuits, similarity): each field's default, bounds
    and help text are declared once, on the field; the command's options are generated from the
    fields (:mod:`iclft.cli.fields`) and the experiment config's section is the same model.
    Frozen: a settings object is a value."""

    model_config = ConfigDict(frozen=True)


def known(kind: str, allowed: Callable[[], Iterable[str]] | Iterable[str]) -> AfterValidator:
    """A field validator: the value must be one of ``allowed`` (a collection, or a function
    returning one, for names registered at import time), else "unknown KIND 'x' (did you mean
    'y'?)"."""

    def check(v: str) -> str:
        names = list(allowed() if callable(allowed) else allowed)
        if v not in names:
            raise ValueError(f"unknown {kind} {v!r}{did_you_mean(v, names)}; allowed: "
                             f"{', '.join(names)}")  # fmt: skip
        return v

    return AfterValidator(check)


def error_location(loc: tuple) -> str:
    """``("analysis", "circuits", "n")`` -> ``analysis.circuits.n``; list indices as ``[i]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "config"


def error_message(err: Mapping[str, Any]) -> str:
    """One pydantic error in words."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown setting"
    if err["type"] == "missing":
        return "required setting is missing"
    if err["type"] == "finite_number":
        return f"must be a finite number, got {err['input']}"
    ctx = err.get("ctx") or {}
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}  # fmt: skip
    if err["type"] in bounds:
        bound = next(iter(ctx.values()), "?")
        return f"must be {bounds[err['type']]} {bound}"
    if err["type"] in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if err["type"] in ("float_parsing", "float_type"):
        return "must be a number"
    return msg


M = TypeVar("M", bound=BaseModel)


def build(model: type[M], values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> M:
    """``model(**values)``; its validation errors become one :class:`UserError` line naming
    each bad setting, as ``names`` calls it (a command's ``--flag``) or by its field name."""
    try:
        return model(**values)
    except ValidationError as e:
        probs = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
            where = error_location(loc)
            if names and loc and loc[0] in names:
                where = names[str(loc[0])] + error_location(loc[1:]).removeprefix("config")
            got = (
                "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err['input']!r})"
            )
            msg = error_message(err)
            shown = "got " in msg or repr(err.get("input")) in msg
            probs.append(f"{where}: {msg}{'' if shown else got}")
        raise UserError("; ".join(probs)) from None


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
