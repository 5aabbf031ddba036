"""Tasks with implicit patterns, and the registry that finds them by name.

Built-in tasks are registered here; a user's package adds tasks through the entry-point group
``iclft.tasks`` (each entry point names a :class:`~iclft.tasks.base.Task` subclass).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from iclft.errors import UnknownNameError, UserError
from iclft.tasks.base import VARIANTS, Example, Task, check_variant
from iclft.tasks.boolean import BooleanTask
from iclft.tasks.code import CodeTask
from iclft.tasks.expression import ExpressionTask
from iclft.tasks.parity import ParityTask
from iclft.tasks.relation import RelationTask

BUILTIN: dict[str, type[Task]] = {
    t.name: t for t in (ExpressionTask, CodeTask, BooleanTask, RelationTask, ParityTask)
}

_plugins: dict[str, type[Task]] | None = None


def _load_plugins() -> dict[str, type[Task]]:
    global _plugins
    if _plugins is None:
        found: dict[str, type[Task]] = {}
        for ep in entry_points(group="iclft.tasks"):
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Task)):
                raise UserError(f"entry point iclft.tasks:{ep.name} is not a Task subclass")
            found[ep.name] = cls
        _plugins = found
    return _plugins


def registry() -> dict[str, type[Task]]:
    """Every known task class by name: built-ins, then plugins (which may not shadow them)."""
    out = dict(BUILTIN)
    for name, cls in _load_plugins().items():
        out.setdefault(name, cls)
    return out


def task_names() -> list[str]:
    return list(registry())


def get_task(name: str) -> Task:
    """A task instance with default knobs; unknown names list the known ones."""
    reg = registry()
    if name not in reg:
        raise UnknownNameError("task", name, reg)
    return reg[name]()


def parse_task_list(spec: str) -> list[str]:
    """``"expression,code"`` -> checked task names (``all`` means every task)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return task_names()
    for n in names:
        get_task(n)
    if not names:
        raise UserError("no task given; allowed: " + ", ".join(task_names()))
    return names


def parse_variant_list(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["both"]:
        return list(VARIANTS)
    if not names:
        raise UserError("no variant given; allowed: " + ", ".join(VARIANTS))
    return [check_variant(v) for v in names]


__all__ = [
    "VARIANTS",
    "Example",
    "Task",
    "get_task",
    "registry",
    "task_names",
    "parse_task_list",
    "parse_variant_list",
]
