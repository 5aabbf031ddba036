"""Fine-tuning curves: items of their own (never test or held-out items, never trained on),
scored as the run's cells are, so the step-0 point is the baseline on the same items; runs of
the old item layout are not resumed."""

from __future__ import annotations

import csv
import json

import pytest

from iclft.finetune import make_config, run_finetune
from iclft.finetune.data import training_data
from iclft.records import CURVE_ITEMS
from iclft.tasks import get_task, task_names
from iclft.tasks.splits import CURVE_BASE, HELDOUT_BASE, curve_items, heldout_items


def _index(example_id: str) -> int:
    return int(example_id.rsplit("-", 1)[1])


@pytest.mark.parametrize("name", task_names())
def test_curve_items_are_disjoint_from_test_and_heldout_items(name):
    task = get_task(name)
    test = {v: task.generate(v, 199, 0) for v in ("clean", "misleading")}
    questions = {q.question for qs in test.values() for q in qs}
    held = heldout_items(task, 0, 100, questions)
    questions |= {q.question for q in held}
    curve = curve_items(task, 0, 199, questions)
    for v, items in curve.items():
        assert len(items) == 199 and {q.variant for q in items} == {v}
        assert all(_index(q.id) >= CURVE_BASE for q in items)  # their own index range
        assert not {q.question for q in items} & questions
    assert all(HELDOUT_BASE <= _index(q.id) < CURVE_BASE for q in held)


def test_a_curve_question_equal_to_a_test_one_is_replaced_by_the_next_item():
    task = get_task("boolean")
    first = curve_items(task, 0, 6, set())["clean"]
    clash = first[2].question  # as if a test item had this question
    items = curve_items(task, 0, 6, {clash})["clean"]
    assert clash not in {q.question for q in items} and len(items) == 6
    assert [q.id for q in items] == [q.id for q in first if q.question != clash] + [
        task.example_id("clean", 0, CURVE_BASE + 6)
    ]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_step_zero_is_the_baseline_scorer_on_the_curve_items(tiny_model_dir, tmp_path):
    from iclft.icl.engine import Engine
    from iclft.icl.evaluate import evaluate_task
    from iclft.models import load_model

    # auto scoring is loglik for boolean: a curve scored by generation (as curves were) would
    # read 0 where the loglik baseline reads about one half
    cfg = make_config(model=str(tiny_model_dir), tasks=["boolean"], train_n=8, steps=2, lr=1e-3,
                      batch_size=4, warmup_steps=0, eval_every=1, eval_n=12, scoring="auto",
                      test_n=40, heldout_n=10)  # fmt: skip
    run_finetune(cfg, tmp_path / "ft", show_progress=False)
    rows = _read(tmp_path / "ft" / "curves.csv")
    assert sorted({int(r["step"]) for r in rows}) == [0, 1, 2]
    assert {(r["items"], r["scoring"], r["protocol"]) for r in rows} == {
        (CURVE_ITEMS, "loglik", "exact")
    }
    base = load_model(str(tiny_model_dir))
    engine = Engine(base.model, base.tokenizer, batch_size=16)
    items = training_data(cfg).curve["boolean"]
    cells = evaluate_task(
        engine, get_task("boolean"), cfg.curve_spec(), model_label="base", items=items,
        split=CURVE_ITEMS,
    ).results  # fmt: skip
    step0 = {r["variant"]: r for r in rows if r["step"] == "0"}
    assert len(cells) == 2
    for c in cells:
        assert c.split == CURVE_ITEMS and c.n == 12 and c.scoring == "loglik"
        assert int(step0[c.variant]["correct"]) == c.correct
        assert float(step0[c.variant]["accuracy"]) == pytest.approx(c.accuracy)
    assert any(0 < c.correct < c.n for c in cells)  # a score a generation curve would not give
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["items"]["item_layout"] == 2
    assert manifest["items"]["scored_questions"] == {"test_n": 40, "heldout_n": 10}


def test_a_run_of_the_old_item_layout_refuses_resume_in_one_line(iclft_main, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    cfg = make_config(model="smollm2-135m", tasks=["boolean"])
    # as an older iclft wrote it: the settings it knew, no item layout
    saved = json.loads(cfg.model_dump_json())
    for new in ("test_n", "heldout_n", "scoring", "protocol", "max_new_tokens", "chat_template"):
        saved.pop(new)
    (old / "train_config.json").write_text(json.dumps(saved))
    (old / "curves.csv").write_text("step,examples_seen,loss,learning_rate,task,variant\n")
    code, err = iclft_main("finetune", "-t", "boolean", "-o", str(old), "--resume")
    assert code == 2
    assert "item layout 1" in err and "cannot resume" in err and "new directory" in err
    assert len(err.strip().splitlines()) == 1
    assert (old / "curves.csv").read_text().count("\n") == 1  # nothing written


def test_a_run_directory_with_old_stages_is_refused_then_started_over_with_force(tmp_path):
    from iclft.errors import UserError
    from iclft.run.config import validate_config
    from iclft.run.runner import prepare_run_dir

    cfg = validate_config({"tasks": ["boolean"], "methods": ["baseline"]})
    run = tmp_path / "run"
    prepare_run_dir(cfg, run, force=False)
    (run / "stages").mkdir()
    (run / "stages" / "m0-s0-icl.json").write_text(json.dumps({"stage": {}, "seconds": 1.0}))
    with pytest.raises(UserError, match="older item layout.*--force to start over"):
        prepare_run_dir(cfg, run, force=False)
    prepare_run_dir(cfg, run, force=True)
    assert not (run / "stages").exists()
    # a stage of this layout is resumed as before
    (run / "stages").mkdir()
    (run / "stages" / "m0-s0-icl.json").write_text(
        json.dumps({"stage": {}, "seconds": 1.0, "item_layout": 2})
    )
    prepare_run_dir(cfg, run, force=False)
    assert (run / "stages" / "m0-s0-icl.json").exists()
