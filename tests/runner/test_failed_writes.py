"""A write that fails midway (a full disk, simulated at the one place every iclft file is written
through) loses nothing: the previous results, stage records and report stay byte for byte, no
temporary file is left, the error is one line, and running again completes the run."""

from __future__ import annotations

import errno
import os

import pytest

from iclft import store
from iclft.report import build_report
from iclft.run.config import validate_config
from iclft.run.runner import run_experiment
from iclft.store import WriteError, write_text_atomic

from .conftest import rows, run_config


class _FillsUp:
    """A file that takes ``room`` bytes, then fails with ENOSPC, as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name)``: atomic writes of files called ``name`` fail after 10 bytes."""
    real = store._open_temp

    def arm(name: str) -> None:
        def opener(fd, mode, path):
            f = real(fd, mode, path)
            return _FillsUp(f, 10) if path.name == name else f

        monkeypatch.setattr(store, "_open_temp", opener)

    return arm


def _snapshot(run_dir):
    keep = ["results.jsonl", "report.html", "report.md", "config.json"]
    files = [run_dir / k for k in keep] + sorted((run_dir / "stages").glob("*"))
    files += sorted((run_dir / "predictions").glob("*"))
    return {str(f.relative_to(run_dir)): f.read_bytes() for f in files if f.exists()}


def test_a_failed_write_keeps_the_old_file_and_says_so_in_one_line(tmp_path, full_disk):
    path = tmp_path / "results.jsonl"
    path.write_text("old\n")
    full_disk("results.jsonl")
    with pytest.raises(WriteError) as info:
        write_text_atomic(path, "new content, longer than the disk has room for\n")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "No space left" in message
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def _cfg(tiny_dir):
    return validate_config(
        run_config(
            tiny_dir,
            tasks=["boolean"],
            methods=["baseline", "icl", "ft-kv"],
            shots=[0, 1],
            finetune={"train_n": 8, "steps": 2, "batch_size": 4, "eval_every": 1, "eval_n": 2},
            finetune_overrides={},
        )
    )


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    run_experiment(_cfg(tiny_dir), run_dir, show_progress=False)
    return rows(run_dir)


@pytest.mark.parametrize(
    "name",
    [
        "train_config.json",  # the fine-tuning stage's first write
        "curves.csv",  # during training
        "m0-s0-ft-kv-train.json",  # a stage's completion record
        "m0-s0-ft-kv-eval.jsonl",  # a stage's predictions
        "results.jsonl",  # the rebuild after a stage
        "manifest.json",  # the fine-tuned model's manifest (its completion mark)
    ],
)
def test_a_run_whose_disk_fills_up_loses_nothing_and_resumes(
    name, tiny_dir, tmp_path, full_disk, reference
):
    cfg, run_dir = _cfg(tiny_dir), tmp_path / "run"
    run_experiment(cfg, run_dir, show_progress=False, stop_after=1)  # the icl stage
    build_report(run_dir)
    before = _snapshot(run_dir)
    assert "stages/m0-s0-icl.json" in before and "report.html" in before

    full_disk(name)
    with pytest.raises(WriteError, match=f"cannot write .*{name}.*No space left"):
        run_experiment(cfg, run_dir, show_progress=False)
    after = _snapshot(run_dir)
    assert {k: after[k] for k in before} == before, "a file written before was changed"
    assert not list(run_dir.rglob(".*.tmp")), "a failed write left its temporary file"

    full_disk("nothing")  # disk space again
    run_experiment(cfg, run_dir, show_progress=False)
    assert rows(run_dir) == reference


def test_a_report_whose_disk_fills_up_keeps_the_previous_report(tiny_dir, tmp_path, full_disk):
    run_dir, cfg = tmp_path / "run", _cfg(tiny_dir)
    run_experiment(cfg, run_dir, show_progress=False, stop_after=1)
    paths = build_report(run_dir)
    figure = paths.figures[0]
    # in the order build_report writes them, so each still holds the old report when it fails
    old = {p.name: p.read_bytes() for p in (figure, paths.html, paths.markdown)}
    run_experiment(cfg, run_dir, show_progress=False)  # new results: a new report would differ
    for name in old:
        full_disk(name)
        with pytest.raises(WriteError, match=name):
            build_report(run_dir)
        assert next(run_dir.rglob(name)).read_bytes() == old[name], name
    assert not list(run_dir.rglob(".*.tmp"))
    full_disk("nothing")
    new = build_report(run_dir)
    assert new.html.read_bytes() != old["report.html"]
