"""`iclft export lm-eval`: lm-evaluation-harness reads the package as iclft's own prompts, and
(integration) its HF backend on smollm2-135m answers the items as `iclft eval` does."""

from __future__ import annotations

import json

import pytest

from iclft.icl.evaluate import EvalSpec, run_eval

lm_eval = pytest.importorskip("lm_eval")  # the dev extra installs it

SPEC = dict(tasks=("boolean", "expression"), variants=("clean", "misleading"), shots=(0, 2),
            n=4, seed=3, scoring="auto", max_new_tokens=8)  # fmt: skip


def _task_dict(directory):
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(directory))
    return get_task_dict(["iclft"], manager)


def _flat(d):
    for name, task in d.items():
        if isinstance(task, dict):
            yield from _flat(task)
        else:
            yield getattr(name, "group_name", name), task


def test_lm_eval_reads_the_exact_prompts_and_requests(tmp_path, iclft_main):
    from iclft.icl.prompts import DemoPool, build_prompt
    from iclft.tasks import get_task

    args = ["--task", "boolean,expression", "--shots", "0,2", "-n", "4", "--seed", "3",
            "--scoring", "auto"]  # fmt: skip
    code, err = iclft_main("export", "lm-eval", *args, "-o", str(tmp_path))
    assert code == 0, err
    tasks = dict(_flat(_task_dict(tmp_path)))
    assert len(tasks) == 2 * 2 * 2
    for name, task in tasks.items():
        docs = list(task.test_docs())
        assert len(docs) == 4
        t = get_task(docs[0]["task"])
        pool = DemoPool(t, 3, "shared", 2)
        queries = t.generate(docs[0]["variant"], 4, 3)
        for i, (doc, q) in enumerate(zip(docs, queries)):
            want = build_prompt(t, q, pool.demos(q, i, doc["shots"]), doc["shots"]).text
            assert doc["id"] == q.id and doc["prompt"] == want
            assert task.fewshot_context(doc, 0) == want  # lm-eval's context is iclft's prompt
            reqs = task.construct_requests(doc, want, metadata=(name, i, 1))
            if t.is_choice:
                assert [r.arguments for r in reqs] == [(want, " " + c) for c in t.choices]
            else:
                ctx, kwargs = reqs.arguments if not isinstance(reqs, list) else reqs[0].arguments
                assert ctx == want and kwargs["max_gen_toks"] == 10 and not kwargs["do_sample"]
    code, err = iclft_main("export", "lm-eval", "--task", "boolean", "--chat-template", "turns",
                           "-o", str(tmp_path / "x"))  # fmt: skip
    assert code == 2


def _iclft_cut(text: str) -> str:
    """The continuation as iclft's engine stops it (``finished``: the newline after the answer
    began)."""
    from iclft.icl.decode import finished

    return next((text[: i + 1] for i in range(len(text)) if finished(text[: i + 1], "newline")),
                text)  # fmt: skip


def _outputs(doc: dict) -> list[str]:
    """Continuations that probe the stop rule, the parse and both judges around a target."""
    t, alt = doc["target"], doc.get("shortcut_target") or "7"
    return [f" {t}\n", f"\n\n {t}\nmore", f" 1{t}", f" {t}\n9", " 7\n" + t, " none", "", " \n ",
            f" {t.upper()}.", f" {t.lower()} and", f" -{t}", f" +{t}x", f" 00{t}", f" {alt}\n{t}",
            f"{t}{t}", f" {t} {alt}"]  # fmt: skip


def _docs(directory) -> list[dict]:
    from iclft.store import read_jsonl

    return [d for f in sorted(directory.glob("iclft_*.jsonl")) for d in read_jsonl(f)]


@pytest.mark.parametrize("protocol", ["exact", "paper"])
def test_the_packages_scoring_is_iclfts_scorer(protocol, tmp_path, iclft_main):
    """utils.process_results judges a continuation as iclft's generate scorer does (exact: cut
    at iclft's stop rule, then parsed; paper: the target anywhere in the whole continuation),
    on every task, the choice tasks generating too; and utils.parse is each task's parse."""
    from importlib import util

    from iclft.icl.scoring import get_scorer
    from iclft.tasks import get_task, task_names

    args = ["--task", "all", "-n", "3", "--scoring", "generate", "--protocol", protocol]
    assert iclft_main("export", "lm-eval", *args, "-o", str(tmp_path))[0] == 0
    spec = util.spec_from_file_location("utils", tmp_path / "utils.py")
    utils = util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    score = get_scorer("generate", protocol)
    docs = _docs(tmp_path)
    assert {d["task"] for d in docs} == set(task_names()) and {d["protocol"] for d in docs} == {
        protocol
    }
    for doc in docs:
        task = get_task(doc["task"])
        item = next(q for q in task.generate(doc["variant"], 3, 0) if q.id == doc["id"])
        for out in _outputs({**doc, "shortcut_target": item.shortcut_target}):
            cut = out if protocol == "paper" else _iclft_cut(out)
            want = score(task, item, cut).correct
            assert utils.process_results(doc, [out]) == {"exact_match": float(want)}, out
            assert utils.until_answer_line(out) == _iclft_cut(out), out
            assert utils.parse(out, doc.get("choices")) == task.parse(out), out
    judged = [utils.process_results(d, [f" 1{d['target']}"])["exact_match"] for d in docs]
    assert set(judged) == ({1.0} if protocol == "paper" else {0.0})  # "2" is found in "12"


def test_the_package_runs_where_iclft_is_not_importable(tmp_path, iclft_main):
    """utils.py imports nothing but the standard library, and scores in an interpreter that
    cannot import iclft (``python -I -S``: no site-packages, no PYTHONPATH, no working
    directory) exactly as in this one."""
    import ast
    import subprocess
    import sys
    from importlib import util

    args = ["--task", "boolean,expression", "-n", "2", "--scoring", "generate"]
    assert iclft_main("export", "lm-eval", *args, "-o", str(tmp_path / "pkg"))[0] == 0
    source = (tmp_path / "pkg" / "utils.py").read_text()
    imported = {
        n.name.split(".")[0] if isinstance(node, ast.Import) else node.module.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for n in (node.names if isinstance(node, ast.Import) else [node])
    }
    assert imported == {"re"}
    docs = _docs(tmp_path / "pkg")
    cases = [(d, out) for d in docs for out in _outputs(d)]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = (
        "import importlib.util, json, sys\n"
        "assert importlib.util.find_spec('iclft') is None, 'iclft is importable'\n"
        f"sys.path.insert(0, {str(tmp_path / 'pkg')!r})\n"
        "import utils\n"
        f"cases = json.load(open({str(tmp_path / 'cases.json')!r}))\n"
        "print(json.dumps([utils.process_results(d, [o])['exact_match'] for d, o in cases]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    theirs = json.loads(run.stdout)
    spec = util.spec_from_file_location("utils", tmp_path / "pkg" / "utils.py")
    utils = util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    ours = [utils.process_results(d, [o])["exact_match"] for d, o in cases]
    assert theirs == ours and 0 < sum(ours) < len(ours)


def test_an_export_replaces_its_earlier_export_whole(tmp_path, iclft_main):
    """No task of an earlier export keeps the iclft tag: the folder holds the new export only;
    a folder another command wrote is refused, and --force moves its contents aside."""
    out = tmp_path / "pkg"
    assert iclft_main("export", "lm-eval", "--task", "all", "-o", str(out))[0] == 0
    first = {p.name for p in out.glob("iclft_*.yaml")}
    assert len(first) == 10
    assert iclft_main("export", "lm-eval", "--task", "boolean", "-n", "2", "-o", str(out))[0] == 0
    assert {p.name for p in out.glob("iclft_*")} == {
        "iclft_boolean_clean_0shot.yaml", "iclft_boolean_clean_0shot.jsonl",
        "iclft_boolean_misleading_0shot.yaml", "iclft_boolean_misleading_0shot.jsonl",
        "iclft_export.json",
    }  # fmt: skip
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.yaml").write_text("task: mine\n")
    code, err = iclft_main("export", "lm-eval", "--task", "boolean", "-o", str(mine))
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["notes.yaml"]
    assert iclft_main("export", "lm-eval", "--task", "boolean", "-o", str(mine), "--force")[0] == 0
    assert (tmp_path / "mine.replaced-1" / "notes.yaml").read_text() == "task: mine\n"
    assert not (mine / "notes.yaml").exists() and (mine / "utils.py").exists()


@pytest.mark.integration
def test_lm_eval_hf_backend_agrees_with_iclft_eval_item_by_item(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from iclft.export import export_lm_eval
    from iclft.models.loading import resolve_model
    from iclft.tasks import get_task

    spec = EvalSpec(**SPEC)
    mine = run_eval(spec, tmp_path / "iclft", model="smollm2-135m", show_progress=False)
    names = export_lm_eval(spec, tmp_path / "pkg")
    path = resolve_model("smollm2-135m").path
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={path},dtype=float32",
        tasks=names,
        task_manager=TaskManager(include_path=str(tmp_path / "pkg")),
        batch_size=8,
        device="cpu",
        log_samples=True,
    )
    preds = [p.to_json() for p in mine.predictions]
    ours = {(p["id"], p["shots"]): p for p in preds}
    from importlib import util

    utils_spec = util.spec_from_file_location("utils", tmp_path / "pkg" / "utils.py")
    utils = util.module_from_spec(utils_spec)  # the package's own scoring module
    utils_spec.loader.exec_module(utils)
    compared = same = 0
    for name in names:
        for s in out["samples"][name]:
            doc = s["doc"]
            p = ours[(doc["id"], doc["shots"])]
            assert p["prompt"] == doc["prompt"]
            t = get_task(doc["task"])
            if t.is_choice:
                lls = [r[0] for r in s["filtered_resps"]]
                theirs = t.choices[max(range(len(lls)), key=lambda j: lls[j])]
                for c, ll in zip(t.choices, lls):
                    assert ll == pytest.approx(p["scores"][c], abs=1e-3)
            else:
                theirs = t.parse(utils.until_answer_line(s["filtered_resps"][0]))
            compared += 1
            same += theirs == p["prediction"]
            assert (s.get("acc", s.get("exact_match")) == 1.0) == p["correct"]
    assert compared == len(preds) and same == compared
    for r in (r.to_json() for r in mine.results):
        name = f"iclft_{r['task']}_{r['variant']}_{r['shots']}shot"
        metric = "acc,none" if get_task(r["task"]).is_choice else "exact_match,none"
        assert out["results"][name][metric] == pytest.approx(r["accuracy"])
    (tmp_path / "agreement.json").write_text(json.dumps({"compared": compared, "same": same}))
