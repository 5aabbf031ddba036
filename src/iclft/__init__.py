"""iclft: in-context learning vs fine-tuning on tasks with implicit patterns."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
