"""The documentation: the strict mkdocs build (a broken link or anchor fails it), the Python API
page's examples run as doctests, and README's promises (short, opens with the two commands,
links that resolve inside the repository)."""

from __future__ import annotations

import doctest
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?m)^\s*```.*$")


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=300)


def test_the_docs_build_strictly_without_a_warning(tmp_path):
    done = _build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*")}
    for page in ("science", "api", "statistics", "finetuning", "analysis", "records", "scaling"):
        assert f"{page}/index.html" in built


@pytest.mark.parametrize(
    "bad, named",
    [
        ("[a page that does not exist](nothere.md)", "nothere.md"),
        ("[an anchor that does not exist](tasks.md#no-such-section)", "no-such-section"),
        ("[an anchor on this page that does not exist](#nowhere)", "#nowhere"),
    ],
)
def test_a_broken_link_or_anchor_fails_the_build(tmp_path, bad, named):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "science.md", "a") as f:
        f.write(f"\nSee {bad}.\n")
    done = _build(tmp_path, tmp_path / "site")
    assert done.returncode != 0
    assert named in done.stderr and "science.md" in done.stderr


@pytest.mark.slow
def test_the_python_api_page_runs_as_written(tmp_path, monkeypatch):
    """docs/api.md's examples, in order, in a fresh directory; the code fences are blanked so
    that a closing fence is not read as expected output (line numbers are kept)."""
    monkeypatch.chdir(tmp_path)
    path = ROOT / "docs" / "api.md"
    text = FENCE.sub("", path.read_text())
    test = doctest.DocTestParser().get_doctest(text, {}, "api.md", str(path), 0)
    assert len(test.examples) > 40
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (above)"


def test_readme_is_a_short_path_to_a_first_result():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) < 150
    first_block = text[text.index("```") : text.index("```", text.index("```") + 3)]
    assert "make demo" in first_block and "make test" in first_block
    assert "../shared" not in text and "DESIGN.md" not in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
