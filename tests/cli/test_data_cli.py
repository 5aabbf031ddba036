"""The ``iclft`` command line, run as a real subprocess (``python -m iclft``) so that the exit
codes and stderr of the ``main()`` wrapper are what a user sees.

Each interpreter start costs a second or more, so every command is launched once, all of them
concurrently, by one module-scoped fixture; the tests then check the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import iclft
from iclft.tasks import get_task, task_names
from iclft.tasks.io import read_examples

PRECIOUS = '{"keep": "me"}\n'


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "iclft", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("cli")
    (d / "keep_variant.jsonl").write_text(PRECIOUS, encoding="utf-8")
    (d / "keep_n.jsonl").write_text(PRECIOUS, encoding="utf-8")
    (d / "blocker").write_text("a file, not a directory\n", encoding="utf-8")
    gen = ["data", "generate"]
    commands: dict[str, list[str]] = {
        "version": ["--version"],
        "tasks": ["tasks"],
        "jsonl": [*gen, "--task", "expression", "--variant", "clean", "-n", "5", "--seed", "3",
                  "-o", str(d / "F.jsonl")],
        "parquet": [*gen, "--task", "relation", "--variant", "clean,misleading", "-n", "4",
                    "--seed", "1", "--format", "parquet", "-o", str(d / "F.parquet")],
        "show": ["data", "show", "--task", "boolean", "--variant", "misleading", "-n", "2"],
        "bad_task": [*gen, "--task", "exprssion", "-n", "2", "-o", str(d / "never.jsonl")],
        "bad_variant": [*gen, "--task", "parity", "--variant", "sneaky", "-n", "2",
                        "-o", str(d / "keep_variant.jsonl")],
        "negative_n": [*gen, "--task", "parity", "-n", "-1", "-o", str(d / "keep_n.jsonl")],
        "proc": [*gen, "--task", "parity", "-n", "2", "-o", "/proc/forbidden/x.jsonl"],
        "under_file": [*gen, "--task", "parity", "-n", "2", "-o", str(d / "blocker" / "x.jsonl")],
        "negative_seed": [*gen, "--task", "parity", "-n", "2", "--seed", "-1",
                          "-o", str(d / "neg_seed.jsonl")],
    }  # fmt: skip
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {k: pool.submit(_run, v, d) for k, v in commands.items()}
        results: dict[str, object] = {k: f.result() for k, f in futures.items()}
    results["dir"] = d
    return results


def _ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def _user_error(r: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2, nothing on stdout, exactly one non-empty stderr line (no traceback)."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    assert r.stdout.strip() == ""
    return lines[0]


def test_version(cli):
    r = cli["version"]
    _ok(r)
    assert r.stdout.strip() == f"iclft {iclft.__version__}"


def test_tasks_lists_every_task(cli):
    r = cli["tasks"]
    _ok(r)
    for name in ("expression", "code", "boolean", "relation", "parity", *task_names()):
        assert name in r.stdout


def test_generate_jsonl(cli):
    _ok(cli["jsonl"])
    path = cli["dir"] / "F.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [f"expression-clean-3-{i:06d}" for i in range(5)]
    # the CLI writes exactly what the library generates
    assert read_examples(path) == get_task("expression").generate("clean", 5, 3)
    assert "5" in cli["jsonl"].stderr  # "wrote 5 examples to ..."


def test_generate_parquet(cli):
    _ok(cli["parquet"])
    path = cli["dir"] / "F.parquet"
    assert path.read_bytes()[:4] == b"PAR1"
    task = get_task("relation")
    expected = task.generate("clean", 4, 1) + task.generate("misleading", 4, 1)
    assert read_examples(path) == expected


def test_show_prints_ids(cli):
    r = cli["show"]
    _ok(r)
    for i in range(2):
        assert f"boolean-misleading-0-{i:06d}" in r.stdout
    assert "boolean-misleading-0-000002" not in r.stdout
    assert "The result is:" in r.stdout


def test_unknown_task(cli):
    line = _user_error(cli["bad_task"])
    assert "exprssion" in line
    assert "expression" in line.replace("exprssion", "")
    assert "did you mean" in line or "allowed" in line
    assert not (cli["dir"] / "never.jsonl").exists()


def test_unknown_variant_leaves_existing_output_intact(cli):
    line = _user_error(cli["bad_variant"])
    assert "sneaky" in line
    assert "clean" in line and "misleading" in line
    assert (cli["dir"] / "keep_variant.jsonl").read_text(encoding="utf-8") == PRECIOUS


def test_negative_n_leaves_existing_output_intact(cli):
    line = _user_error(cli["negative_n"])
    assert "-1" in line
    assert "non-negative" in line or ">= 0" in line
    assert (cli["dir"] / "keep_n.jsonl").read_text(encoding="utf-8") == PRECIOUS


def test_unwritable_output_under_proc(cli):
    line = _user_error(cli["proc"])
    assert "/proc/forbidden" in line


def test_output_under_a_regular_file(cli):
    line = _user_error(cli["under_file"])
    assert "blocker" in line
    assert (cli["dir"] / "blocker").read_text(encoding="utf-8") == "a file, not a directory\n"


def test_negative_seed_is_a_user_error(cli):
    line = _user_error(cli["negative_seed"])
    assert "seed" in line
    assert not (cli["dir"] / "neg_seed.jsonl").exists()


def test_no_stray_temporary_files(cli):
    leftovers = [p.name for p in cli["dir"].iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
