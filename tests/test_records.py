"""Records: JSON out in the on-disk key order, optional fields left out while unset, JSON in
gives the same record back, and the arm names derive from the fine-tuning methods."""

from __future__ import annotations

import json

import pytest

from iclft.errors import UserError
from iclft.finetune.methods import METHOD_NAMES as METHODS
from iclft.records import (
    CURVE_FIELDS,
    CURVE_ITEMS,
    CellResult,
    CircuitsResult,
    Comparison,
    CurvePoint,
    Prediction,
    SimilarityResult,
    arms,
    ft_arm,
    ft_method,
    is_finetune,
)
from iclft.store import read_jsonl, write_json_atomic, write_jsonl_atomic

PRED = dict(id="q1", model="m", method="icl", task="boolean", variant="clean", shots=2,
            shots_used=2, demo_set=1, split="test", chat_template="none", demo_ids=["d1", "d2"],
            scoring="loglik", seed=0, prompt="p", output="True", prediction="True",
            target="True", shortcut_target="True", correct=True, substring_correct=True,
            shortcut_answer=True)  # fmt: skip


def test_a_prediction_writes_its_keys_in_order_and_only_the_set_optional_ones():
    p = Prediction(**PRED)
    assert list(p.to_json()) == list(PRED)  # no scores, no step/checkpoint
    scored = p.replace(scores={"True": -0.1, "False": -2.0})
    assert list(scored.to_json()) == [*PRED, "scores"]
    final = scored.replace(step=20)  # a fine-tuned final model: checkpoint written as null
    assert list(final.to_json())[-3:] == ["scores", "step", "checkpoint"]
    assert final.to_json()["checkpoint"] is None
    for r in (p, scored, final, final.replace(checkpoint="ck/checkpoint-10")):
        assert Prediction.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_a_cell_result_round_trips_and_the_runner_fields_follow_the_evaluation_fields():
    r = CellResult(model="m", task="t", variant="clean", method="icl", shots=2, seed=1, n=4,
                   correct=3, accuracy=0.75, ci_low=0.3, ci_high=0.95, set_accuracies=[0.75],
                   scoring="generate")  # fmt: skip
    keys = list(r.to_json())
    assert keys[:5] == ["model", "task", "variant", "method", "shots"]
    assert not {"stage", "step", "train_examples", "ft_dir", "checkpoint"} & set(keys)
    icl = r.replace(stage="m0-s0-icl", train_examples=2)
    assert list(icl.to_json())[-2:] == ["stage", "train_examples"]
    ft = r.replace(method="ft-full", shots=0, stage="m0-s0-ft-full-eval", step=20,
                   train_examples=320, ft_dir="finetune/m/ft-full")  # fmt: skip
    assert list(ft.to_json())[-5:] == ["stage", "step", "train_examples", "ft_dir", "checkpoint"]
    for row in (r, icl, ft):
        assert CellResult.from_json(json.loads(json.dumps(row.to_json()))) == row
    assert not ft.is_checkpoint and ft.replace(checkpoint="c").is_checkpoint


@pytest.mark.parametrize(
    "change, message",
    [({"accuracy": 1.5}, "accuracy must be a number in [0, 1]"), ({"task": None}, "lacks task")],
)
def test_a_bad_result_row_names_its_place(change, message):
    good = CellResult(model="m", task="t", variant="clean", method="icl", accuracy=0.5)
    with pytest.raises(UserError, match=r"^results\.jsonl:3: ") as e:
        CellResult.from_json({**good.to_json(), **change}, "results.jsonl:3")
    assert message in str(e.value)


def test_a_result_row_of_an_old_run_reads_with_defaults():
    r = CellResult.from_json(
        {"model": "m", "task": "t", "variant": "clean", "method": "icl", "shots": "4",
         "accuracy": 0.5, "n": 20, "set_accuracies": [0.5, float("nan")], "future": 1}
    )  # fmt: skip
    assert (r.shots, r.seed, r.split, r.demo_sets, r.correct) == (4, 0, "test", 1, 10)
    assert r.set_accuracies == [0.5] and r.train_examples is None
    assert (r.well_formed_rate, r.constant_answer, r.constant_accuracy) == (None, None, None)
    new = CellResult.from_json({**r.to_json(), "well_formed_rate": "0.75",
                                "constant_answer": "True", "constant_accuracy": 0.5})  # fmt: skip
    assert (new.well_formed_rate, new.constant_answer, new.constant_accuracy) == (0.75, "True", 0.5)


def test_a_comparison_round_trips_and_flips():
    c = Comparison(model="m", task="t", variant="clean", a_method="icl", a_shots=4,
                   b_method="baseline", b_shots=0, n=10, accuracy_a=0.6, accuracy_b=0.2,
                   diff=0.4, ci_low=0.1, ci_high=0.7, a_only=4, b_only=0, p_value=0.125,
                   seeds=[0], interval="i", test="t", p_mcnemar=0.125, p_adjusted=0.5,
                   adjustment="holm over 4 comparisons")  # fmt: skip
    assert list(c.to_json())[-4:] == ["test_name", "p_mcnemar", "p_adjusted", "adjustment"]
    assert "n_boot" not in c.to_json()  # only rows of older runs, whose test resampled
    assert Comparison.from_json(c.to_json()) == c
    assert c.flipped().flipped() == c and c.flipped().diff == -0.4
    # decided on the adjusted p: 0.125 raw, 0.5 adjusted, no decision either way
    assert (c.decision_p, c.sign) == (0.5, 0)
    assert c.replace(p_adjusted=0.01).sign == 1 and c.replace(p_adjusted=0.01).flipped().sign == -1
    assert c.text().endswith("McNemar p=0.12, adjusted p=0.5 (holm over 4 comparisons)")
    assert "p<0.001" in c.replace(p_value=0.0).text()


def test_curve_points_write_the_csv_columns_and_read_back_from_strings():
    # the columns of older curves come first, in their order; the new ones follow
    assert CURVE_FIELDS == ["step", "examples_seen", "loss", "learning_rate", "task",
                            "variant", "accuracy", "correct", "n", "items", "scoring",
                            "protocol"]  # fmt: skip
    p = CurvePoint(step=5, examples_seen=80, loss=1.25, learning_rate=1e-05, task="t",
                   variant="clean", accuracy=0.3, correct=6, n=20, items=CURVE_ITEMS,
                   scoring="loglik", protocol="exact")  # fmt: skip
    assert list(p.to_json()) == CURVE_FIELDS
    as_csv = {k: "" if v is None else str(v) for k, v in p.to_json().items()}
    assert CurvePoint.from_json(as_csv) == p
    start = CurvePoint.from_json({"step": "0", "loss": "", "task": "t", "variant": "clean"})
    assert (start.examples_seen, start.loss, start.learning_rate) == (0, None, None)
    # a row of an older curve (scored on test items): no items, scoring or protocol
    assert (start.items, start.scoring, start.protocol) == (None, None, None)
    with pytest.raises(UserError, match="needs step, task and variant"):
        CurvePoint.from_json({"step": "1", "task": "t"})


def test_arms_derive_from_the_fine_tuning_methods():
    assert arms() == ("baseline", "icl", *(f"ft-{m}" for m in METHODS))
    assert all(ft_method(ft_arm(m)) == m and is_finetune(ft_arm(m)) for m in METHODS)
    assert not is_finetune("icl")


def test_the_store_writes_records_as_their_json(tmp_path):
    p = Prediction(**PRED)
    write_jsonl_atomic(tmp_path / "p.jsonl", [p, p.to_json()])
    assert read_jsonl(tmp_path / "p.jsonl") == [p.to_json(), p.to_json()]
    write_json_atomic(tmp_path / "s.json", {"results": [p]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"results": [p.to_json()]}


def test_analysis_results_round_trip_and_read_partial_files():
    c = CircuitsResult(task="boolean", spec={"n": 2}, model={"spec": "m"}, n_pairs=2,
                       settings={"base": {"shots": 0, "identified": True}},
                       shifts=[{"from": "base", "to": "icl", "status": "identified"}])  # fmt: skip
    d = c.to_json()
    assert list(d)[:3] == ["task", "spec", "model"] and list(d)[-2:] == ["settings", "shifts"]
    assert CircuitsResult.from_json(json.loads(json.dumps(d))) == c
    partial = CircuitsResult.from_json({"task": "t", "settings": {"x": 1}, "shifts": [None]})
    assert (partial.settings, partial.shifts, partial.n_pairs) == ({}, [], None)
    s = SimilarityResult(task="parity", n_queries=3, metrics={"trained": {}}, lr={"chosen": {}})
    assert list(s.to_json())[-1] == "per_query"
    assert SimilarityResult.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert SimilarityResult.from_json({"metrics": None}).metrics == {}
    # written only when set (older files have neither), and read back
    c2 = c.replace(shift_comparison={"a": "icl", "b": "ft", "p_value": 0.01})
    assert list(c2.to_json())[-1] == "shift_comparison"
    assert CircuitsResult.from_json(json.loads(json.dumps(c2.to_json()))) == c2
    s2 = s.replace(simam_layers=[1, 2])
    assert SimilarityResult.from_json(json.loads(json.dumps(s2.to_json()))) == s2
    assert SimilarityResult.from_json({"simam_layers": "x"}).simam_layers is None


def test_stage_record_round_trips_with_its_rows():
    from iclft.records import StageRecord

    body = {"stage": {"key": "m0-s0-icl", "kind": "icl", "model": "m", "seed": 0,
                      "method": None, "task": None}, "seconds": 1.5}  # fmt: skip
    rec = StageRecord.from_json(body)
    assert rec.to_json() == body  # no body fields written while unset
    ft = {**body, "finetune": {"dir": "finetune/m/ft-kv", "steps": 3}}
    assert StageRecord.from_json(ft).to_json() == ft
    with pytest.raises(UserError, match="not a StageRecord"):
        StageRecord.from_json({"seconds": 1})


def test_an_older_circuits_json_reads_its_estimator_under_the_new_name():
    old = CircuitsResult.from_json({"task": "parity", "spec": {"method": "exact", "n": 2}})
    assert old.spec == {"estimator": "exact", "n": 2}
