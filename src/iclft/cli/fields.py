"""Command options generated from a settings model's fields, so that a setting's default,
bounds and help text are written once, on the field (:class:`iclft.validation.Settings`).

One ``--field-name`` option per field (or the flags a command names for it), with the field's
description and default as its help; a list or tuple field is given comma-separated. An option
left out is not passed on, so the model's default applies; the values given are validated by the
model, and a bad one is reported by its flag (:func:`iclft.validation.build`)."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def field_kind(annotation: Any) -> tuple[type, bool]:
    """The option's click type for a field's annotation, and whether it is given as a list."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Annotated:
        return field_kind(args[0])
    if origin in (typing.Union, types.UnionType):
        if any(typing.get_origin(a) in (list, tuple) for a in args):
            return str, True
        return field_kind(args[0])
    if origin in (list, tuple):
        return str, True
    if origin is typing.Literal:
        return str, False
    return annotation, False


def field_help(field: FieldInfo, is_list: bool) -> str:
    default = field.get_default(call_default_factory=True)
    if is_list and isinstance(default, (list, tuple)):
        shown = ",".join(map(str, default)) or "none"
    else:
        shown = default
    choices = typing.get_args(field.annotation)
    named = typing.get_origin(field.annotation) is typing.Literal and choices
    allowed = f" One of: {', '.join(map(str, choices))}." if named else ""
    lists = " Comma-separated." if is_list else ""
    if field.is_required():
        return f"{field.description or ''}{allowed}{lists} (required)"
    tail = "" if default is None else f" (default: {shown})"
    return f"{field.description or ''}{allowed}{lists}{tail}"


def flag_names(model: type[BaseModel], flags: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """field -> the flag that sets it (for messages about a bad value)."""
    return {name: (flags.get(name) or [_flag(name)])[0] for name in model.model_fields}


def _flag(name: str, field: FieldInfo | None = None) -> str:
    flag = f"--{name.replace('_', '-')}"
    if field is not None and field.annotation is bool:
        return f"{flag}/--no-{flag[2:]}"
    return flag


def field_options(
    model: type[BaseModel],
    flags: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = (),
) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model`` (but ``skip``), as a Typer option."""
    flags = flags or {}
    params = []
    fields = model.model_fields.items()
    for name, field in sorted(fields, key=lambda kv: not kv[1].is_required()):  # required first
        if name in skip:
            continue
        kind, is_list = field_kind(field.annotation)
        option = typer.Option(
            None, *(flags.get(name) or [_flag(name, field)]), help=field_help(field, is_list),
            show_default=False,
        )  # fmt: skip
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None
            )
        )
    return params


def with_field_options(
    command: Callable,
    model: type[BaseModel],
    flags: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = (),
) -> Callable:
    """``command``'s own parameters (its ``**settings`` aside) and one option per field."""
    own = [
        p
        for p in inspect.signature(command).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    command.__signature__ = inspect.Signature([*own, *field_options(model, flags, skip)])  # type: ignore[attr-defined]
    return command


def given_values(model: type[BaseModel], given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the options give: options left out dropped, lists split at commas."""
    values: dict[str, Any] = {}
    for name, v in given.items():
        if v is None or name not in model.model_fields:
            continue
        if field_kind(model.model_fields[name].annotation)[1] and isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        values[name] = v
    return values
