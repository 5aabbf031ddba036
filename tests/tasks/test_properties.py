"""Property tests for every registered task.

Targets and shortcut answers are recomputed *independently* from ``meta`` (small ``ast``
walkers, BFS, a subprocess for programs), never through the library's own code paths.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import Counter, deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iclft.tasks import VARIANTS, Example, get_task, task_names

TASKS = task_names()
BINARY = [n for n in TASKS if get_task(n).choices is not None]
FREE = [n for n in TASKS if get_task(n).choices is None]

SEEDS = st.integers(min_value=0, max_value=10**6)
INDICES = st.integers(min_value=0, max_value=10**4)
VARIANT = st.sampled_from(VARIANTS)
PROP = settings(max_examples=60, deadline=None)

CONTRACT_KEYS = [
    "id",
    "task",
    "variant",
    "question",
    "target",
    "shortcut_target",
    "choices",
    "meta",
]


def test_registry_has_the_five_builtin_tasks():
    assert {"expression", "code", "boolean", "relation", "parity"} <= set(TASKS)
    assert set(FREE) >= {"expression", "code"}
    assert set(BINARY) >= {"boolean", "relation", "parity"}


# --------------------------------------------------------------------------------------------
# independent evaluators
# --------------------------------------------------------------------------------------------


def eval_int_expr(node: ast.AST) -> int:
    """Evaluate integer arithmetic (+, -, *, unary +/-, int literals) by walking the tree."""
    if isinstance(node, ast.Expression):
        return eval_int_expr(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = eval_int_expr(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        left, right = eval_int_expr(node.left), eval_int_expr(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
    raise AssertionError(f"unexpected node in arithmetic expression: {ast.dump(node)}")


def eval_bool_expr(node: ast.AST) -> bool:
    """Evaluate ``and``/``or``/``not`` over True/False literals by walking the tree."""
    if isinstance(node, ast.Expression):
        return eval_bool_expr(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is bool:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not eval_bool_expr(node.operand)
    if isinstance(node, ast.BoolOp):
        vals = [eval_bool_expr(v) for v in node.values]
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    raise AssertionError(f"unexpected node in boolean expression: {ast.dump(node)}")


def connected(edges: list[list[str]], source: str, target: str) -> bool:
    adj: dict[str, set[str]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    seen, queue = {source}, deque([source])
    while queue:
        u = queue.popleft()
        for w in adj.get(u, ()):
            if w not in seen:
                seen.add(w)
                queue.append(w)
    return target in seen


_EXPR_RE = re.compile(r"^\(([^()]*)\)\+\(([^()]*)\)\*\(([^()]*)\)$")


def expression_parts(expr: str) -> tuple[list[int], list[int], list[int]]:
    m = _EXPR_RE.match(expr)
    assert m, f"expression not of the form (a)+(z)*(c): {expr!r}"
    parts = []
    for text in m.groups():
        terms = [int(t) for t in re.findall(r"[+-]?\d+", text)]
        # the terms re-joined must give back the text exactly
        rejoined = str(terms[0]) + "".join(f"+{t}" if t >= 0 else str(t) for t in terms[1:])
        assert rejoined == text, (rejoined, text)
        parts.append(terms)
    return parts[0], parts[1], parts[2]


def independent_target(ex: Example) -> str:
    """The target recomputed from ``meta`` without the library (code is checked elsewhere)."""
    meta = ex.meta
    if ex.task == "expression":
        return str(eval_int_expr(ast.parse(meta["expression"], mode="eval")))
    if ex.task == "boolean":
        return str(eval_bool_expr(ast.parse(meta["expression"], mode="eval")))
    if ex.task == "relation":
        return "Yes" if connected(meta["edges"], meta["source"], meta["target"]) else "No"
    if ex.task == "parity":
        return "odd" if sum(meta["numbers"]) % 2 else "even"
    raise KeyError(ex.task)


def independent_shortcut(ex: Example) -> str | None:
    meta = ex.meta
    if ex.task == "expression":
        a, _, _ = expression_parts(meta["expression"])
        return str(sum(a))
    if ex.task == "boolean":
        top = ast.parse(meta["expression"], mode="eval").body
        assert isinstance(top, ast.BoolOp)
        last = top.values[-1]
        assert isinstance(last, ast.Constant) and type(last.value) is bool
        return str(last.value)
    if ex.task == "relation":
        return "Yes" if any("Z" in e for e in meta["edges"]) else "No"
    if ex.task == "parity":
        return "odd" if meta["numbers"][-1] % 2 else "even"
    return None


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in TASKS if n != "code"])
@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_target_recomputed_from_meta(name, variant, seed, index):
    task = get_task(name)
    ex = task.make_example(variant, seed, index)
    assert ex.target == independent_target(ex)
    if task.choices is not None:
        assert ex.target in task.choices
    else:
        assert re.fullmatch(r"-?\d+", ex.target)


@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_expression_meta_terms_agree_with_expression(variant, seed, index):
    ex = get_task("expression").make_example(variant, seed, index)
    a, z, c = expression_parts(ex.meta["expression"])
    assert ex.meta["a_terms"] == a
    assert ex.meta["z_terms"] == z
    assert ex.meta["c_terms"] == c
    assert ex.question == ex.meta["expression"] + "="
    assert int(ex.target) == sum(a) + sum(z) * sum(c)
    if variant == "clean":
        assert sum(z) == 0
    else:
        assert sum(z) != 0 and sum(c) != 0


@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_relation_question_lists_meta_edges(variant, seed, index):
    ex = get_task("relation").make_example(variant, seed, index)
    lines = ex.question.split("\n")
    assert lines[-1] == "Question: Is A connected with Z?"
    assert lines[:-1] == [f"{a} is connected with {b}." for a, b in ex.meta["edges"]]
    assert ex.meta["source"] == "A" and ex.meta["target"] == "Z"


@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_parity_question_lists_meta_numbers(variant, seed, index):
    ex = get_task("parity").make_example(variant, seed, index)
    listed = ", ".join(str(v) for v in ex.meta["numbers"])
    assert f"Numbers: {listed}\n" in ex.question
    assert all(isinstance(v, int) for v in ex.meta["numbers"])


@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_boolean_question_is_meta_expression(variant, seed, index):
    ex = get_task("boolean").make_example(variant, seed, index)
    assert ex.question == ex.meta["expression"]


# a fixed sample of (variant, seed, index): running each program is a subprocess
_CODE_SAMPLE = [(VARIANTS[i % 2], (i * 7919) % 10**6, (i * 104729) % 10**4) for i in range(40)]


def test_code_target_by_running_the_program(tmp_path: Path):
    task = get_task("code")
    procs = []
    for k, (variant, seed, index) in enumerate(_CODE_SAMPLE):
        ex = task.make_example(variant, seed, index)
        assert f"Input: {ex.meta['input']}" in ex.question
        assert ex.meta["program"] in ex.question
        src = tmp_path / f"prog_{k}.py"
        src.write_text(ex.meta["program"], encoding="utf-8")
        p = subprocess.Popen(
            [sys.executable, "-I", "-S", str(src)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append((ex, p))
    for ex, p in procs:
        stdout, stderr = p.communicate(input=str(ex.meta["input"]) + "\n", timeout=10)
        assert p.returncode == 0, (ex.id, stderr)
        assert stdout.strip() == ex.target, (ex.id, ex.meta["program"], stdout)
        if ex.variant == "clean":
            assert stdout.strip() == ex.shortcut_target
        else:
            assert stdout.strip() != ex.shortcut_target


def _code_shortcut(program: str, x: int) -> int:
    """Evaluate function2 with its ``a`` term dropped (the shortcut), walking the AST."""
    tree = ast.parse(program)
    f2 = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "function2")
    ret = f2.body[-1]
    assert isinstance(ret, ast.Return)
    expr = ret.value

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Name):
            assert node.id == "z", ast.dump(node)
            return x
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            op = type(node.op)
            return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[op]
        raise AssertionError(ast.dump(node))

    # drop a trailing "+ a" / "- a"
    if isinstance(expr, ast.BinOp) and isinstance(expr.right, ast.Name) and expr.right.id == "a":
        expr = expr.left
    return ev(expr)


@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_code_program_shape_and_shortcut(variant, seed, index):
    ex = get_task("code").make_example(variant, seed, index)
    program = ex.meta["program"]
    assert isinstance(ex.meta["input"], int)
    assert "import" not in program
    assert "random" not in program
    assert not re.search(r"\d\.\d|\d\.|\.\d", program), "float literal in program"
    assert "/" not in program.replace("//", ""), "true division in program"
    tree = ast.parse(program)
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.Import, ast.ImportFrom))
        if isinstance(node, ast.Constant):
            assert type(node.value) is int, ast.dump(node)
        if isinstance(node, ast.BinOp):
            assert not isinstance(node.op, (ast.Div, ast.Pow)), ast.dump(node)
    assert ex.shortcut_target == str(_code_shortcut(program, ex.meta["input"]))
    uses_a = "a" in {
        n.id
        for f in tree.body
        if isinstance(f, ast.FunctionDef) and f.name == "function2"
        for n in ast.walk(f.body[-1])
        if isinstance(n, ast.Name)
    }
    assert uses_a == (variant == "misleading")


# --------------------------------------------------------------------------------------------
# shortcuts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
@PROP
@given(seed=SEEDS, index=INDICES)
def test_clean_shortcut_equals_target(name, seed, index):
    ex = get_task(name).make_example("clean", seed, index)
    assert ex.shortcut_target == ex.target
    expected = independent_shortcut(ex)
    if expected is not None:
        assert ex.shortcut_target == expected


@pytest.mark.parametrize("name", TASKS)
@PROP
@given(seed=SEEDS, index=INDICES)
def test_misleading_shortcut(name, seed, index):
    task = get_task(name)
    ex = task.make_example("misleading", seed, index)
    if task.choices is None:
        assert ex.shortcut_target != ex.target
    else:
        assert ex.shortcut_target in task.choices
    expected = independent_shortcut(ex)
    if expected is not None:
        assert ex.shortcut_target == expected
    if name == "parity":  # by design the cue points the wrong way on every misleading item
        assert ex.shortcut_target != ex.target
    if name == "relation":  # Z is always present in misleading items
        assert ex.shortcut_target == "Yes"


@pytest.mark.parametrize("name", [n for n in BINARY if n != "parity"])
@pytest.mark.parametrize("seed", [0, 12345])
def test_misleading_binary_shortcut_at_chance(name, seed):
    exs = get_task(name).generate("misleading", 400, seed)
    rate = sum(ex.shortcut_target == ex.target for ex in exs) / len(exs)
    assert 0.35 <= rate <= 0.65, rate


@pytest.mark.parametrize("seed", [0, 12345])
def test_parity_misleading_shortcut_always_wrong(seed):
    exs = get_task("parity").generate("misleading", 400, seed)
    assert all(ex.shortcut_target != ex.target for ex in exs)
    assert all(independent_shortcut(ex) != independent_target(ex) for ex in exs)


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", [0, 777])
def test_binary_labels_balanced(name, variant, seed):
    task = get_task(name)
    full = task.generate(variant, 50, seed)
    assert len(full) == 50
    # every prefix (== generate(n), see prefix stability) is balanced to within one
    for n in range(1, 51):
        counts = Counter(ex.target for ex in full[:n])
        values = [counts.get(c, 0) for c in task.choices]
        assert max(values) - min(values) <= 1, (n, counts)
    # and direct generations of a few sizes, too
    for n in (1, 2, 3, 7, 20, 33):
        counts = Counter(ex.target for ex in task.generate(variant, n, seed))
        values = [counts.get(c, 0) for c in task.choices]
        assert sum(values) == n
        assert max(values) - min(values) <= 1, (n, counts)


@pytest.mark.parametrize("name", TASKS)
def test_negative_seed_is_a_user_error(name):
    from iclft.errors import UserError

    with pytest.raises(UserError, match="seed"):
        get_task(name).generate("clean", 2, seed=-1)


# --------------------------------------------------------------------------------------------
# rendering and parsing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_render_parse_round_trip(name, variant, seed, index):
    task = get_task(name)
    ex = task.make_example(variant, seed, index)
    assert task.parse(" " + ex.target + "\n") == ex.target
    assert task.parse(" " + ex.target + "\nQuestion: 3+4=\nThe result is: 7") == ex.target
    assert task.parse(ex.target) == ex.target
    query, demo = task.render_query(ex), task.render_demo(ex)
    assert demo.startswith(query)
    assert task.parse(demo[len(query) :]) == ex.target
    assert ex.question in query
    assert query.endswith(task.answer_lead)
    assert task.parse("") is None
    # the shortcut answer parses too (it is a valid answer)
    assert task.parse(" " + ex.shortcut_target + "\n") == ex.shortcut_target


# --------------------------------------------------------------------------------------------
# data contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
@PROP
@given(variant=VARIANT, seed=SEEDS, index=INDICES)
def test_data_contract(name, variant, seed, index):
    task = get_task(name)
    ex = task.make_example(variant, seed, index)
    d = ex.to_dict()
    assert list(d) == CONTRACT_KEYS
    assert d["task"] == name and d["variant"] == variant
    assert ex.id == f"{name}-{variant}-{seed}-{index:06d}"
    line = ex.to_json()
    assert "\n" not in line
    assert list(json.loads(line)) == CONTRACT_KEYS
    back = Example.from_dict(json.loads(line))
    assert back == ex
    assert back.to_json() == line
    if task.choices is None:
        assert ex.choices is None and d["choices"] is None
    else:
        assert ex.choices is not None
        assert list(ex.choices) == list(task.choices) == d["choices"]
        assert ex.target in ex.choices and ex.shortcut_target in ex.choices
    assert isinstance(d["meta"], dict) and d["meta"]
    assert json.loads(json.dumps(d["meta"])) == d["meta"]
    # deterministic: the same coordinates give the same example
    assert task.make_example(variant, seed, index) == ex


# --------------------------------------------------------------------------------------------
# the independent evaluators themselves (so a broken helper cannot make the tests vacuous)
# --------------------------------------------------------------------------------------------


def test_helpers_on_known_values():
    expr = "(3+2)+(4-4)*(1-7+2-9)"
    assert eval_int_expr(ast.parse(expr, mode="eval")) == 5
    assert eval_int_expr(ast.parse("(1-3)+(2-1)*(-4+2)", mode="eval")) == -4
    assert expression_parts(expr) == ([3, 2], [4, -4], [1, -7, 2, -9])
    assert eval_bool_expr(
        ast.parse("(True and not False) or (False or False) or True", "e", "eval")
    )
    assert not eval_bool_expr(ast.parse("(True or False) and (not True) and True", "e", "eval"))
    assert not eval_bool_expr(ast.parse("True and False or False", "e", "eval"))
    edges = [["A", "C"], ["C", "D"], ["Z", "B"]]
    assert connected(edges, "A", "D") and not connected(edges, "A", "Z")
    assert connected(edges + [["B", "D"]], "A", "Z")
    assert _code_shortcut("def function2(z, a):\n    return (z + 2) * 3 - a\n", 4) == 18
    with pytest.raises(AssertionError):
        eval_int_expr(ast.parse("2/1", mode="eval"))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: get_task("code").__class__(input_range=(0, 0)),
        lambda: get_task("parity").__class__(length=(3, 3)),
        lambda: get_task("relation").__class__(nodes=(3, 3)),
    ],
)
def test_task_knobs_that_cannot_work_are_rejected(factory):
    from iclft.errors import UserError

    with pytest.raises(UserError):
        factory()


def test_both_variants_keyword():
    from iclft.tasks import parse_variant_list

    assert parse_variant_list("both") == ["clean", "misleading"]
