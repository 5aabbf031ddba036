"""Generation is a pure function of (task, variant, seed, index): files are byte-stable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iclft.tasks import VARIANTS, get_task, task_names
from iclft.tasks.io import read_examples, write_examples

TASKS = task_names()


def _both(name: str, n: int, seed: int):
    task = get_task(name)
    return [ex for v in VARIANTS for ex in task.generate(v, n, seed)]


@pytest.mark.parametrize("name", TASKS)
def test_jsonl_byte_identical_and_seed_sensitive(name, tmp_path: Path):
    a = write_examples(tmp_path / "a.jsonl", _both(name, 30, 5))
    b = write_examples(tmp_path / "b.jsonl", _both(name, 30, 5))
    c = write_examples(tmp_path / "c.jsonl", _both(name, 30, 6))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 60
    ids = [json.loads(line)["id"] for line in lines]
    assert len(set(ids)) == len(ids)
    assert ids[0] == f"{name}-clean-5-000000" and ids[-1] == f"{name}-misleading-5-000029"
    # no leftover temporary files next to the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "c.jsonl"]


@pytest.mark.parametrize("name", TASKS)
def test_parquet_byte_identical_and_round_trip(name, tmp_path: Path):
    exs = _both(name, 12, 9)
    a = write_examples(tmp_path / "a.parquet", exs, "parquet")
    b = write_examples(tmp_path / "b.parquet", _both(name, 12, 9), "parquet")
    c = write_examples(tmp_path / "c.parquet", _both(name, 12, 10), "parquet")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert read_examples(a) == exs


@pytest.mark.parametrize("name", TASKS)
def test_jsonl_read_round_trip(name, tmp_path: Path):
    exs = _both(name, 15, 123)
    path = write_examples(tmp_path / "x.jsonl", exs)
    back = read_examples(path)
    assert back == exs
    assert [ex.to_json() for ex in back] == path.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_prefix_stability(name, variant):
    task = get_task(name)
    full = task.generate(variant, 40, 3)
    for k in (0, 1, 7, 40):
        assert task.generate(variant, k, 3) == full[:k]
    # start/offset generation agrees too
    assert task.generate(variant, 10, 3, start=25) == full[25:35]
    assert [task.make_example(variant, 3, i) for i in range(40)] == full


@pytest.mark.parametrize("name", TASKS)
def test_variants_and_seeds_differ(name):
    task = get_task(name)
    clean = task.generate("clean", 20, 0)
    mis = task.generate("misleading", 20, 0)
    other = task.generate("clean", 20, 1)
    assert [e.question for e in clean] != [e.question for e in mis]
    assert [e.question for e in clean] != [e.question for e in other]
    # examples within one file are not all the same
    assert len({e.question for e in clean}) > 10


def test_same_file_across_processes_and_hash_seeds(tmp_path: Path):
    """Byte-identical output from separate interpreters with different hash seeds."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from iclft.tasks import get_task, task_names, VARIANTS\n"
        "from iclft.tasks.io import write_examples\n"
        "exs = [ex for n in task_names() for v in VARIANTS\n"
        "       for ex in get_task(n).generate(v, 8, 4)]\n"
        "write_examples(Path(sys.argv[1]), exs)\n"
    )
    outs = []
    procs = []
    for hs in ("1", "2"):
        out = tmp_path / f"h{hs}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": hs}
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(out)], env=env))
        outs.append(out)
    for p in procs:
        assert p.wait(timeout=60) == 0
    here = tmp_path / "here.jsonl"
    write_examples(
        here, [ex for n in TASKS for v in VARIANTS for ex in get_task(n).generate(v, 8, 4)]
    )
    assert outs[0].read_bytes() == outs[1].read_bytes() == here.read_bytes()


def test_write_examples_rejects_unknown_format_and_directory(tmp_path: Path):
    from iclft.errors import UserError

    exs = get_task("parity").generate("clean", 2, 0)
    with pytest.raises(UserError, match="jsonl"):
        write_examples(tmp_path / "x.csv", exs, "csv")
    with pytest.raises(UserError, match="directory"):
        write_examples(tmp_path, exs)
    with pytest.raises(UserError):
        read_examples(tmp_path / "missing.jsonl")


def test_generate_rejects_bad_arguments():
    from iclft.errors import UserError

    task = get_task("expression")
    with pytest.raises(UserError, match="misleading"):
        task.generate("dirty", 3, 0)
    with pytest.raises(UserError, match="non-negative"):
        task.generate("clean", -1, 0)
    assert task.generate("clean", 0, 0) == []
