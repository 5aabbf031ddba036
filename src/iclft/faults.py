"""Deterministic fault injection: a process dies at a *named point*, never after a wall-clock delay.

Crash-safety tests (and users who want to see resume work) set ``ICLFT_KILL_AT`` to one or more
comma-separated points; the process sends itself SIGKILL (no cleanup, no flush: what ``kill -9``
or a lost node does) the first time it reaches a listed point, or the Nth time with ``#N``::

    ICLFT_KILL_AT=train-step:3 iclft run configs/demo.yaml -o runs/demo   # dies after step 3

Points (``<key>`` is a runner stage key such as ``m0-s0-ft-kv-train``):

=========================  =====================================================================
``stage:<key>``            the runner, before stage ``<key>`` does any work
``eval:<key>/<task>``      the runner, mid-stage: ``<task>``'s cells of an icl/ft-eval stage scored
                           (in an ft-eval stage, once per evaluated checkpoint, then the final)
``stage-outputs:<key>``    the runner: the stage's outputs written, its completion record not yet
``train-step:<S>``         the trainer, at the end of optimizer step ``S`` (checkpoints of earlier
                           steps are on disk; step ``S``'s own is not)
``train-save``             the trainer: the final model saved, its manifest not yet written
``circuits:<setting>``     circuits: setting ``<setting>`` (base, icl, ft) patched
``similarity:<setting>``   similarity: setting ``<setting>`` (zsl, icl, gd, random_gd[r], lcgd,
                           random_lcgd[r]; ``untrained-<setting>`` on the untrained model) recorded
``write:<file name>``      any atomic write: data in the temporary file, not yet renamed into place
``fetch:<phase>``          the model cache: ``downloaded`` (wheels), ``converted`` (staging holds
                           the model, no marker), ``staged`` (marker written, before the rename)
=========================  =====================================================================

``ICLFT_OOM_ABOVE=<tokens>`` makes the engine's forward raise ``torch.OutOfMemoryError`` when a
batch holds more than ``<tokens>`` input tokens: a device memory limit, at a chosen size, for
testing ``--batch-size auto`` on a machine without one.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "ICLFT_KILL_AT"
OOM_ENV = "ICLFT_OOM_ABOVE"
_hits: Counter[str] = Counter()


def _wanted(spec: str) -> dict[str, int]:
    """``"a,b#2"`` -> ``{"a": 1, "b": 2}``."""
    out: dict[str, int] = {}
    for item in spec.split(","):
        point, _, nth = item.strip().partition("#")
        if point:
            out[point] = int(nth) if nth.strip().isdigit() else 1
    return out


def kill_point(name: str) -> None:
    """Die here (SIGKILL) if ``ICLFT_KILL_AT`` names this point and this is its Nth arrival."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _hits[name] += 1
    if _wanted(spec).get(name) == _hits[name]:
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # pragma: no cover - platforms without SIGKILL


def oom_point(tokens: int) -> None:
    """Raise ``torch.OutOfMemoryError`` if ``ICLFT_OOM_ABOVE`` is set below ``tokens``."""
    limit = os.environ.get(OOM_ENV)
    if limit and limit.strip().isdigit() and tokens > int(limit):
        import torch

        raise torch.OutOfMemoryError(f"{OOM_ENV}={limit}: a batch of {tokens} input tokens")
