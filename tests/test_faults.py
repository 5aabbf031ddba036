"""The fault points: a process dies by SIGKILL exactly at the Nth arrival at a named point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

SCRIPT = """
from iclft.faults import kill_point
for i in range(5):
    print(i, flush=True)
    kill_point("here")
"""


@pytest.mark.parametrize(
    "spec,rc,printed",
    [
        (None, 0, "0 1 2 3 4"),
        ("here", -signal.SIGKILL, "0"),
        ("elsewhere, here#3", -signal.SIGKILL, "0 1 2"),
        ("here#9", 0, "0 1 2 3 4"),  # never reached a ninth time
        ("her", 0, "0 1 2 3 4"),  # names match exactly
    ],
)
def test_kill_point_dies_at_the_named_arrival(spec, rc, printed):
    env = {k: v for k, v in os.environ.items() if k != "ICLFT_KILL_AT"}
    if spec is not None:
        env["ICLFT_KILL_AT"] = spec
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == rc
    assert proc.stdout.split() == printed.split()
