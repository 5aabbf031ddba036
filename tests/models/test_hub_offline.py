"""A hub id on a machine without a hub fails at once: the hub is asked once (no retries with
back-off), or not at all under HF_HUB_OFFLINE=1; a model already in the local hub cache is used
offline. The "hub" here is a real local TCP server that counts connections and answers none."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest


@pytest.fixture
def dead_hub():
    """A TCP endpoint that accepts and closes every connection; ``.connections`` counts them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    class Hub:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        connections = 0

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            Hub.connections += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield Hub
    server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    server.close()
    thread.join()


def _eval(model, hub, tmp_path, **env):
    full = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
        **env,
    }
    cmd = [sys.executable, "-m", "iclft", "eval", "--model", model, "--task", "parity",
           "-n", "2", "--device", "cpu", "-o", str(tmp_path / "out")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=300)


def _error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


def test_unreachable_hub_is_asked_once_then_a_clear_error(dead_hub, tmp_path):
    line = _error(_eval("some-org/not-cached", dead_hub, tmp_path))
    assert "the Hugging Face hub cannot be reached" in line
    assert "not in the local hub cache" in line and "smollm2-135m" in line
    assert dead_hub.connections == 1  # one probe, no retries


def test_hf_hub_offline_never_touches_the_network(dead_hub, tmp_path):
    line = _error(_eval("some-org/not-cached", dead_hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE is set" in line and "not in the local hub cache" in line
    assert dead_hub.connections == 0


def test_a_model_in_the_local_hub_cache_loads_while_the_hub_is_down(
    dead_hub, tmp_path, tiny_model_dir
):
    # the hub cache layout huggingface_hub writes: refs/main -> snapshots/<commit>/files
    repo = tmp_path / "hf" / "hub" / "models--some-org--tiny"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    proc = _eval("some-org/tiny", dead_hub, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert dead_hub.connections == 1
    model = json.loads((tmp_path / "out" / "manifest.json").read_text())["model"]
    assert model["kind"] == "hub" and model["offline"] is True and model["weights_sha256"]
