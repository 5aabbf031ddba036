"""Reading results: pooling over seeds, intervals, derived fields, the headline and its
sentences computed from the numbers."""

from __future__ import annotations

import json
import math
import re

import pytest

from iclft.errors import UserError
from iclft.icl.compare import paired_comparisons
from iclft.icl.metrics import wilson_interval
from iclft.records import CellResult, Prediction
from iclft.report.data import aggregate, load_run
from iclft.report.tables import best_icl_shots, compare, headline, sentence, sentences

from .synthetic import result_row


def _rows(*dicts):
    return [CellResult.from_json(d, f"test:{i}") for i, d in enumerate(dicts, 1)]


def _write_results(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return run_dir


def test_one_seed_keeps_the_rows_wilson_interval():
    (cell,) = aggregate(_rows(result_row("m", "t", "clean", "icl", 4, 0, 12, 40))).values()
    lo, hi = wilson_interval(12, 40)
    assert (cell.accuracy, cell.low, cell.high) == (0.3, lo, hi)
    assert cell.n_seeds == 1 and cell.std is None and cell.n == 40
    assert cell.train_examples == 4  # derived for ICL: k demonstrations


def test_one_seed_without_interval_gets_wilson_from_counts():
    d = result_row("m", "t", "clean", "baseline", 0, 0, 5, 20)
    del d["ci_low"], d["ci_high"]
    (cell,) = aggregate(_rows(d)).values()
    assert (cell.low, cell.high) == pytest.approx(wilson_interval(5, 20))
    assert cell.train_examples == 0


def test_several_seeds_pool_mean_spread_and_a_covering_interval():
    rows = _rows(
        *(result_row("m", "t", "clean", "icl", 8, s, c, 20) for s, c in enumerate((4, 10, 16)))
    )
    (cell,) = aggregate(rows).values()
    accs = [0.2, 0.5, 0.8]
    assert cell.accuracy == pytest.approx(0.5)
    assert cell.std == pytest.approx(0.3)
    assert (cell.acc_min, cell.acc_max, cell.n_seeds, cell.n_total) == (0.2, 0.8, 3, 60)
    pooled = wilson_interval(30, 60)
    # the pooled interval is narrower than the seed range here: the band widens to cover seeds
    assert cell.low == pytest.approx(min(pooled[0], *accs))
    assert cell.high == pytest.approx(max(pooled[1], *accs))
    assert cell.low == 0.2 and cell.high == 0.8


def test_a_seed_written_twice_counts_once_last_row_wins():
    rows = _rows(
        result_row("m", "t", "clean", "icl", 1, 0, 2, 20),
        result_row("m", "t", "clean", "icl", 1, 0, 6, 20),
    )
    (cell,) = aggregate(rows).values()
    assert cell.n_seeds == 1 and cell.accuracy == pytest.approx(0.3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"accuracy": 1.5}, "accuracy must be a number in [0, 1]"),
        ({"method": None}, "lacks method"),
    ],
)
def test_malformed_rows_are_user_errors_with_their_line(tmp_path, change, message):
    good = result_row("m", "t", "clean", "icl", 1, 0, 2, 20)
    run = _write_results(tmp_path / "run", [good, {**good, **change}])
    with pytest.raises(UserError, match=r"results\.jsonl:2: ") as e:
        load_run(run)
    assert message in str(e.value)


def test_no_results_is_a_user_error_that_says_what_to_do(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"no results in .*run; run `iclft run` first"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "results.jsonl").write_text("")
    with pytest.raises(UserError, match="no results in"):
        load_run(tmp_path / "run")


def test_finetuned_cells_take_examples_seen_from_the_curve_and_hub_ids_match_slugs(
    tmp_path, make_run
):
    model = "Qwen/Qwen1.5-0.5B"
    run = make_run(tmp_path / "run", models=(model,), methods=("baseline", "ft-full"))
    rows = [json.loads(ln) for ln in (run / "results.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("train_examples", None)
    _write_results(run, rows)
    data = load_run(run)
    (ft,) = data.finetune
    assert (ft.model, ft.method, ft.examples_seen) == (model, "ft-full", 320)
    assert ft.directory.parent.name == "Qwen__Qwen1.5-0.5B"
    cell = data.cell(model, "expression", "clean", "ft-full")
    assert cell is not None and cell.train_examples == 320
    assert data.ft_methods(model) == ["ft-full"]


def test_best_icl_is_highest_clean_accuracy_fewest_shots_on_ties(tmp_path):
    rows = [
        result_row("m", "t", "clean", "icl", k, 0, c, 20) for k, c in ((1, 5), (4, 12), (8, 12))
    ] + [result_row("m", "t", "misleading", "icl", k, 0, 19, 20) for k in (1, 4, 8)]
    data = load_run(_write_results(tmp_path / "run", rows))
    assert best_icl_shots(data, "m", "t") == (4, "best on test items")
    chosen, fixed = headline(data, "m", "t")
    assert chosen.label == "ICL (k=4, best on test items)"
    assert chosen.misleading is not None and chosen.misleading.shots == 4
    assert (fixed.label, fixed.shots) == ("ICL (k=8, fixed)", 8)  # the largest k by default


def test_best_icl_is_chosen_on_heldout_items_when_the_run_has_them(tmp_path):
    """Held-out rows choose k (here 1, although k=8 is best on the test items) and never
    become test cells; the config's fixed_shots names the fixed entry."""
    test = [
        result_row("m", "t", "clean", "icl", k, 0, c, 20) for k, c in ((1, 10), (4, 12), (8, 18))
    ]
    held = [
        result_row("m", "t", "clean", "icl", k, 0, c, 20, split="heldout")
        for k, c in ((1, 15), (4, 9), (8, 11))
    ]
    run = _write_results(tmp_path / "run", test + held)
    (run / "config.json").write_text(json.dumps({"fixed_shots": 4}))
    data = load_run(run)
    assert best_icl_shots(data, "m", "t") == (1, "best on held-out")
    assert data.cell("m", "t", "clean", "icl", 1).accuracy == 0.5  # the test row, not held-out
    assert data.heldout[("m", "t", "clean", "icl", 1)].accuracy == 0.75
    chosen, fixed = headline(data, "m", "t")
    assert (chosen.label, chosen.shots) == ("ICL (k=1, best on held-out)", 1)
    assert (fixed.label, fixed.shots) == ("ICL (k=4, fixed)", 4)
    (config := json.loads((run / "config.json").read_text())).update(fixed_shots=1)
    (run / "config.json").write_text(json.dumps(config))
    (only,) = headline(load_run(run), "m", "t")
    assert only.label == "ICL (k=1, best on held-out, = fixed k)"


def test_cells_with_demonstration_sets_carry_their_spread_and_combine_seeds(tmp_path):
    """A seed's two-level interval is used as is; two seeds combine their half-widths as
    independent estimates (narrower than either), widened to both seeds' accuracies."""
    rows = []
    for seed, c, sets, lo, hi in (
        (0, 30, [0.4, 0.5, 0.6], 0.30, 0.70),
        (1, 36, [0.55, 0.6, 0.65], 0.40, 0.80),
    ):
        r = result_row("m", "t", "clean", "icl", 2, seed, 0, 20)
        r.update(demo_sets=3, n_scored=60, correct=c, set_accuracies=sets, ci_low=lo, ci_high=hi)
        rows.append(r)
    for r in rows:
        r["accuracy"] = r["correct"] / r["n_scored"]
    data = load_run(_write_results(tmp_path / "run", rows[:1]))
    one = data.cell("m", "t", "clean", "icl", 2)
    assert (one.low, one.high, one.demo_sets) == (0.30, 0.70, 3)
    assert (one.set_min, one.set_max) == (0.4, 0.6)
    both = load_run(_write_results(tmp_path / "run2", rows)).cell("m", "t", "clean", "icl", 2)
    assert both.accuracy == pytest.approx(0.55)
    assert both.low == pytest.approx(0.55 - (0.2**2 + 0.2**2) ** 0.5 / 2)
    assert both.high == pytest.approx(0.55 + (0.2**2 + 0.2**2) ** 0.5 / 2)
    assert (both.set_min, both.set_max) == (0.4, 0.65)


def _paper_like(tmp_path, *, icl_clean, ft_clean, icl_mis, n=50, shortcut=0.8, ft=True):
    rows = [
        result_row("m", "expression", "clean", "baseline", 0, 0, 5, n),
        result_row("m", "expression", "misleading", "baseline", 0, 0, 4, n),
        result_row("m", "expression", "clean", "icl", 2, 0, icl_clean // 2, n),
        result_row("m", "expression", "clean", "icl", 8, 0, icl_clean, n),
        result_row(
            "m", "expression", "misleading", "icl", 8, 0, icl_mis, n, shortcut_rate=shortcut
        ),
    ]
    if ft:
        rows += [
            result_row("m", "expression", "clean", "ft-full", 0, 0, ft_clean, n),
            result_row("m", "expression", "misleading", "ft-full", 0, 0, 6, n),
        ]
    data = load_run(_write_results(tmp_path / "run", rows))
    return sentence(headline(data, "m", "expression"), "expression")


def test_sentence_states_a_clear_icl_win_the_drop_and_the_shortcut(tmp_path):
    s = _paper_like(tmp_path, icl_clean=31, ft_clean=5, icl_mis=2)
    assert s.startswith(
        "On expression, ICL (k=8) reaches 0.62 clean vs 0.10 for fine-tuning (ft-full)"
    )
    assert "with the 0-shot baseline at 0.10" in s
    assert "on misleading items ICL drops to 0.04 and answers the shortcut 80% of the time" in s
    assert "ft-full scores 0.12 there" in s
    assert "not distinguishable" not in s.split(";")[0]


def test_sentence_hedges_when_intervals_overlap(tmp_path):
    s = _paper_like(tmp_path, icl_clean=9, ft_clean=7, icl_mis=8, n=20)
    first = s.split(";")[0]
    assert (
        "ICL (k=8) (0.45 clean) and fine-tuning (ft-full) (0.35) are not distinguishable at n=20"
        in first
    )
    assert "ICL scores 0.40 (not distinguishable from clean at n=20) and answers" in s
    assert "reaches" not in s


def test_sentence_without_finetuning_compares_icl_with_the_baseline(tmp_path):
    s = _paper_like(tmp_path, icl_clean=30, ft_clean=0, icl_mis=45, ft=False)
    assert s.startswith(
        "On expression, ICL (k=8) reaches 0.60 clean vs 0.10 for the 0-shot baseline"
    )
    assert "on misleading items ICL rises to 0.90" in s
    assert "ft-" not in s


def test_sentence_when_fine_tuning_wins(tmp_path):
    s = _paper_like(tmp_path, icl_clean=6, ft_clean=40, icl_mis=3)
    assert s.startswith(
        "On expression, fine-tuning (ft-full) reaches 0.80 clean vs 0.12 for ICL (k=8)"
    )


def test_compare_is_symmetric_and_zero_on_overlap():
    a, b, c = aggregate(
        _rows(
            result_row("m", "t", "clean", "icl", 1, 0, 45, 50),
            result_row("m", "t", "clean", "icl", 2, 0, 5, 50),
            result_row("m", "t", "clean", "icl", 4, 0, 42, 50),
        )
    ).values()
    assert (compare(a, b), compare(b, a), compare(a, c)) == (1, -1, 0)
    assert not math.isnan(a.low)


def pred_row(method, shots, seed, i, correct, variant="clean", target=None):
    return Prediction(model="m", task="expression", variant=variant, method=method,
                      shots=shots, seed=seed, id=f"expression-{variant}-{seed}-{i}",
                      correct=correct, target=target)  # fmt: skip


def _paired_run(tmp_path, icl_right, *, targets=None, n=20):
    """A run of ICL (right on the first ``icl_right`` items), fine-tuning (first 6) and the
    baseline (first 2) on the same n items, with its comparisons.jsonl."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    rows = [
        result_row("m", "expression", "clean", "baseline", 0, 0, 2, n),
        result_row("m", "expression", "clean", "icl", 8, 0, icl_right, n),
        result_row("m", "expression", "clean", "ft-full", 0, 0, 6, n),
    ]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = targets or [None] * n
    preds = [pred_row("icl", 8, 0, i, i < icl_right, target=t[i]) for i in range(n)]
    preds += [pred_row("ft-full", 0, 0, i, i < 6, target=t[i]) for i in range(n)]
    preds += [pred_row("baseline", 0, 0, i, i < 2, target=t[i]) for i in range(n)]
    comps = paired_comparisons(preds)
    (run / "comparisons.jsonl").write_text("".join(json.dumps(c.to_json()) + "\n" for c in comps))
    return run, comps


def test_sentence_decides_on_the_printed_adjusted_p_of_its_paired_test(tmp_path):
    """ICL right on 12 of 20 items, fine-tuning on 6 of them: the Wilson intervals overlap,
    and the paired t rejects at 0.05 (p=0.028) but not after Holm over the run's 3
    comparisons (0.055): the sentence hedges and prints both. With 15 right, both decide."""
    run, comps = _paired_run(tmp_path, 12)
    ((_, _, text),) = sentences(load_run(run))
    c = next(c for c in comps if (c.a_method, c.b_method) == ("icl", "ft-full"))
    assert c.p_value < 0.05 < c.p_adjusted and c.ci_low > 0  # raw test and its interval agree
    assert text.startswith(
        "On expression, ICL (k=8) (0.60 clean) and fine-tuning (ft-full) (0.30) are not "
        "distinguishable (paired difference +0.30 [+0."
    )
    assert "paired t p=0.028, adjusted p=0.055 (holm over 3 comparisons)" in text
    # the same numbers without the paired test hedge: the Wilson intervals overlap
    (run / "comparisons.jsonl").unlink()
    ((_, _, hedged),) = sentences(load_run(run))
    assert "are not distinguishable at n=20" in hedged
    run, comps = _paired_run(tmp_path / "more", 15)
    ((_, _, text),) = sentences(load_run(run))
    assert text.startswith(
        "On expression, ICL (k=8) reaches 0.75 clean vs 0.30 for fine-tuning (ft-full) "
        "(paired difference +0.45 [+0."
    )
    assert not re.search(r"p=0(?![.\d])", text) and "adjusted p=0.017" in text


def test_a_win_must_also_beat_the_constant_answer(tmp_path):
    """ICL right on 14 of 20 items beats fine-tuning (6), but 16 of the 20 targets are "1":
    always answering "1" scores 0.80, and the sentence says ICL does not beat it. When the
    targets are balanced it does, and the sentence says so."""
    targets = ["1"] * 16 + ["0"] * 4
    rows = [
        result_row("m", "expression", "clean", "baseline", 0, 0, 2, 20),
        result_row("m", "expression", "clean", "icl", 8, 0, 14, 20),
        result_row("m", "expression", "clean", "ft-full", 0, 0, 6, 20),
    ]
    rows[1].update(constant_answer="1", constant_accuracy=0.8)
    run, comps = _paired_run(tmp_path, 14, targets=targets)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ((_, _, text),) = sentences(load_run(run))
    assert text.startswith("On expression, ICL (k=8) reaches 0.70 clean vs 0.30 for fine-tuning")
    assert ', but does not beat always answering "1" (0.80 on these items; paired t p=' in text
    assert {c.adjustment for c in comps} == {"holm over 5 comparisons"}
    run, comps = _paired_run(tmp_path / "balanced", 20, targets=["1", "0"] * 10)
    ((_, _, text),) = sentences(load_run(run))
    assert ", and beats the constant answer (0.50 on these items; paired t p=" in text


def test_checkpoints_pool_per_step_and_cells_keep_the_final_model(tmp_path, make_run):
    run = make_run(tmp_path / "run", methods=("baseline", "icl", "ft-full"), checkpoints=(5, 10))
    data = load_run(run)
    model = "smollm2-135m"
    final = data.cell(model, "expression", "clean", "ft-full")
    assert final is not None and (final.step, final.train_examples) == (20, 320)
    ckpts = data.checkpoint_cells(model, "expression", "clean", "ft-full")
    assert [(c.step, c.train_examples) for c in ckpts] == [(5, 80), (10, 160)]
    raw = [
        r for r in data.rows if (r.task, r.variant, r.method) == ("expression", "clean", "ft-full")
    ]
    assert [r.step for r in raw] == [5, 10, 20]
    assert [c.accuracy for c in (*ckpts, final)] == [r.accuracy for r in raw]
    assert data.evaluated_steps(model, "ft-full") == [5, 10, 20]
    (entry,) = [e for e in headline(data, model, "expression") if e.method == "ft-full"]
    assert entry.clean is final  # the headline reports the final model


def test_rows_without_a_step_from_older_runs_still_load_and_report(tmp_path, make_run):
    from iclft.report import build_report

    run = make_run(
        tmp_path / "run", tasks=("boolean",), methods=("baseline", "icl", "ft-kv"), analysis=False
    )
    rows = [json.loads(ln) for ln in (run / "results.jsonl").read_text().splitlines()]
    for r in rows:
        for key in ("step", "checkpoint", "ft_dir"):
            r.pop(key, None)
    data = load_run(_write_results(run, rows))
    cell = data.cell("smollm2-135m", "boolean", "clean", "ft-kv")
    assert cell is not None and cell.step is None and cell.train_examples == 320
    assert data.checkpoints == {} and data.evaluated_steps("smollm2-135m", "ft-kv") == []
    names = {f.name for f in build_report(run).figures}
    assert {"finetune_curves__smollm2-135m.png", "data_efficiency__smollm2-135m.png"} <= names


def test_shortcut_only_accuracy_is_read_pooled_and_unknown_when_missing():
    rows = _rows(
        result_row("m", "t", "misleading", "icl", 1, 0, 5, 20, shortcut_only_accuracy=0.45),
        result_row("m", "t", "misleading", "icl", 1, 1, 5, 20, shortcut_only_accuracy=0.55),
        result_row("m", "t", "clean", "icl", 1, 0, 5, 20),  # an older run: no such key
    )
    assert [r.shortcut_only_accuracy for r in rows] == [0.45, 0.55, None]
    cells = aggregate(rows)
    assert cells[("m", "t", "misleading", "icl", 1)].shortcut_only_accuracy == pytest.approx(0.5)
    assert cells[("m", "t", "clean", "icl", 1)].shortcut_only_accuracy is None
