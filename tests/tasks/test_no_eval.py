"""No ``eval``/``exec``/``compile`` anywhere in the package, and no trust_remote_code=True."""

from __future__ import annotations

import ast
from pathlib import Path

import iclft

SRC = Path(iclft.__file__).resolve().parent
FORBIDDEN = {"eval", "exec", "compile"}


def _py_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert files, f"no python files under {SRC}"
    return files


def _forbidden_calls(tree: ast.AST) -> list[tuple[int, str]]:
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in FORBIDDEN:
                hits.append((node.lineno, f.id))
            # builtins.eval(...) / __builtins__.exec(...)
            if (
                isinstance(f, ast.Attribute)
                and f.attr in FORBIDDEN
                and isinstance(f.value, ast.Name)
                and f.value.id in {"builtins", "__builtins__"}
            ):
                hits.append((node.lineno, f"{f.value.id}.{f.attr}"))
    return hits


def _trust_remote_code_true(tree: ast.AST) -> list[int]:
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
            if isinstance(node.value, ast.Constant) and node.value.value is True:
                hits.append(node.value.lineno)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for a, d in pairs:
                if a.arg == "trust_remote_code" and isinstance(d, ast.Constant) and d.value is True:
                    hits.append(d.lineno)
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if (
                    isinstance(k, ast.Constant)
                    and k.value == "trust_remote_code"
                    and isinstance(v, ast.Constant)
                    and v.value is True
                ):
                    hits.append(v.lineno)
    return hits


def test_no_eval_exec_compile_in_src():
    found = []
    for path in _py_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [
            f"{path.relative_to(SRC)}:{ln}: {name}(...)" for ln, name in _forbidden_calls(tree)
        ]
    assert not found, "forbidden calls:\n" + "\n".join(found)


def test_no_trust_remote_code_true_in_src():
    found = []
    for path in _py_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [f"{path.relative_to(SRC)}:{ln}" for ln in _trust_remote_code_true(tree)]
    assert not found, "trust_remote_code=True at:\n" + "\n".join(found)


def test_scanners_detect_what_they_look_for():
    bad = ast.parse(
        "x = eval('1')\n"
        "exec('y = 2')\n"
        "import builtins\nbuiltins.compile('1', 'f', 'eval')\n"
        "import re\nre.compile('a')\n"
    )
    assert [name for _, name in _forbidden_calls(bad)] == ["eval", "exec", "builtins.compile"]
    trc = ast.parse(
        "f(trust_remote_code=True)\n"
        "f(trust_remote_code=False)\n"
        "def g(trust_remote_code=True): pass\n"
        "def h(*, trust_remote_code=True): pass\n"
        "kw = {'trust_remote_code': True}\n"
    )
    assert sorted(_trust_remote_code_true(trc)) == [1, 3, 4, 5]
