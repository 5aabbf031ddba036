"""iclft: in-context learning vs fine-tuning on tasks with implicit patterns."""

from __future__ import annotations

from iclft._version import __version__
from iclft.logs import filter_known_warnings

filter_known_warnings()

__all__ = ["__version__", "load_run"]


def __getattr__(name: str):
    """``iclft.load_run`` (imported on first use: it needs pandas)."""
    if name == "load_run":
        from iclft.frames import load_run

        return load_run
    raise AttributeError(f"module 'iclft' has no attribute {name!r}")
