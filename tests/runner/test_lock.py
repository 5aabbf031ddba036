"""One run directory, one writer: a second run (or fine-tuning) on a directory another process
holds is refused at once with the holder's pid, and touches nothing; the lock dies with its
process, so a killed run never leaves a stale one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from iclft.errors import UserError
from iclft.finetune import make_config, run_finetune
from iclft.run.config import validate_config
from iclft.run.runner import run_experiment
from iclft.store import LOCK_NAME, DirectoryBusy, dir_lock

from .conftest import run_config

HOLD = """
import sys
from pathlib import Path
from iclft.store import dir_lock
with dir_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder():
    """``holder(dir)``: another process that holds ``dir``'s lock until the test ends."""
    procs = []

    def start(path):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "locked"  # blocks until it holds the lock
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _baseline(tiny_dir):
    return run_config(tiny_dir, tasks=["boolean"], methods=["baseline"], shots=[0])


def test_a_second_run_is_refused_with_the_holders_pid(tiny_dir, tmp_path, holder, iclft_main):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_baseline(tiny_dir)))
    code, err = iclft_main("run", str(config), "-o", str(run_dir))
    assert code == 2
    line = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert line.startswith("error: ")
    assert f"in use by another iclft process (pid {proc.pid})" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing written

    proc.stdin.close()  # the holder ends: the directory is free again
    proc.wait()
    s = run_experiment(validate_config(_baseline(tiny_dir)), run_dir, show_progress=False)
    assert s.ran == 1


def test_a_fine_tuning_directory_has_one_writer(tiny_dir, tmp_path, holder):
    out = tmp_path / "ft"
    proc = holder(out)
    cfg = make_config(
        model=str(tiny_dir), tasks=["boolean"], train_n=4, steps=1, warmup_steps=0, eval_n=2
    )
    with pytest.raises(DirectoryBusy, match=f"pid {proc.pid}"):
        run_finetune(cfg, out, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    proc = holder(tmp_path / "d")
    with pytest.raises(DirectoryBusy):
        with dir_lock(tmp_path / "d"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with dir_lock(tmp_path / "d"):  # free at once: the kernel dropped the dead process's lock
        assert (tmp_path / "d" / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_the_lock_is_reentrant_within_a_process_and_not_a_run_of_its_own(tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    with dir_lock(run_dir), dir_lock(run_dir):  # the CLI holds it around run + report
        run_experiment(validate_config(_baseline(tiny_dir)), run_dir, show_progress=False)
    # the lock file does not make a fresh directory look like a foreign, non-empty one
    other = tmp_path / "other"
    with dir_lock(other):
        pass
    run_experiment(validate_config(_baseline(tiny_dir)), other, show_progress=False)
    assert issubclass(DirectoryBusy, UserError)
