"""The package's floors (issue: no module imports from a package above it, no import cycle).

The floors are declared once, as the import-linter contract in pyproject.toml (which `make lint`
runs with `lint-imports`); these tests read that declaration, check it on grimp's import graph
of the installed package (grimp is import-linter's graph library), and show that the checks
would catch an upward import and a cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def floors() -> list[list[str]]:
    """The contract's layers, top first; each a list of modules (``a : b``)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in cfg["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in layer.split(":")] for layer in contract["layers"]]


def floor_of(module: str, layers: list[list[str]]) -> int | None:
    for i, layer in enumerate(layers):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    return None


def upward_imports(graph, layers) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits on a higher floor."""
    out = []
    for m in sorted(graph.modules):
        for imp in sorted(graph.find_modules_directly_imported_by(m)):
            a, b = floor_of(m, layers), floor_of(imp, layers)
            if a is not None and b is not None and b < a:
                out.append((m, imp))
    return out


def cycles(graph, skip=("iclft",)) -> list[list[str]]:
    """Strongly connected sets of modules larger than one (Tarjan), the package root left out
    (it is a facade: ``iclft.load_run`` is imported from it lazily)."""
    mods = sorted(m for m in graph.modules if m not in skip)
    adj = {m: sorted(x for x in graph.find_modules_directly_imported_by(m) if x not in skip)
           for m in mods}  # fmt: skip
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in mods:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("iclft")


def test_every_module_has_a_floor(graph):
    layers = floors()
    assert [m for m in sorted(graph.modules) if m != "iclft" and floor_of(m, layers) is None] == []


def test_no_module_imports_from_a_floor_above_it(graph):
    assert upward_imports(graph, floors()) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_checks_catch_an_upward_import_and_a_cycle(graph):
    g = grimp.build_graph("iclft")  # fresh graphs to change
    g.add_import(importer="iclft.store", imported="iclft.tasks.base")
    assert upward_imports(g, floors()) == [("iclft.store", "iclft.tasks.base")]
    g = grimp.build_graph("iclft")
    g.add_import(importer="iclft.stats", imported="iclft.records")
    assert cycles(g) == [["iclft.records", "iclft.stats"]]


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter not installed")  # fmt: skip
def test_the_import_linter_contract_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 kept, 0 broken" in proc.stdout
