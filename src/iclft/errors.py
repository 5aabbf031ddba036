"""User-facing errors.

Anything a user can fix (a bad argument, a missing file, an unknown name) raises a subclass of
:class:`UserError` with a one-line message saying what was wrong and what is allowed. The CLI
prints that line in red and exits with code 2, without a stack trace.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake the user can fix; the message is shown as is."""

    exit_code = 2


class UnknownNameError(UserError):
    """A name (task, variant, model alias, method...) that is not one of the allowed ones."""

    def __init__(self, kind: str, name: object, allowed: Iterable[str]):
        allowed = sorted(allowed)
        hint = did_you_mean(str(name), allowed)
        msg = f"unknown {kind} {name!r}{hint}; allowed: {', '.join(allowed)}"
        super().__init__(msg)
        self.kind, self.name, self.allowed = kind, name, allowed


class ModelError(UserError):
    """A model that cannot be resolved, fetched or loaded."""


class TrainingDiverged(UserError):
    """Training produced non-finite parameters or loss; nothing was saved as a result. Not a
    mistake in the input as such (a diverging learning rate is legitimate), hence its own code."""

    exit_code = 3


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest allowed name, or an empty string."""
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
