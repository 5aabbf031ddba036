"""`iclft rescore RUN_DIR`: every evaluation stage judged again from its saved predictions, with
no model loaded; the run's own protocol reproduces results.jsonl and comparisons.jsonl byte
for byte, another rejudges every stage and keeps what the runner added to each row."""

from __future__ import annotations

import json

import pytest

from iclft.run.config import validate_config
from iclft.run.runner import run_experiment

from .conftest import run_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    """A tiny run with every kind of row: baseline and ICL (two demonstration sets, held-out
    cells), a fine-tuned model's checkpoint and final rows, loglik and generate scoring, and a
    similarity analysis."""
    data = run_config(
        tiny_dir,
        tasks=["boolean", "expression"],
        methods=["baseline", "icl", "ft-kv"],
        shots=[0, 1, 2],
        scoring="auto",
        demo_sets=2,
        heldout_n=2,
        finetune={"train_n": 8, "steps": 2, "batch_size": 4, "eval_n": 2, "eval_every": 1,
                  "eval_checkpoints": [1]},
        finetune_overrides={},
        analysis={"similarity": {"enabled": True, "tasks": ["boolean"], "shots": 1, "n": 2,
                                 "lr": 1e-2, "random_draws": 1, "untrained": False,
                                 "n_boot": 20}},
    )  # fmt: skip
    out = tmp_path_factory.mktemp("rescore-run") / "r"
    run_experiment(validate_config(data), out, show_progress=False)
    return out


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _no_model(monkeypatch):
    import transformers

    def no_model(*a, **k):
        raise AssertionError("rescore loaded a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)


def test_the_runs_protocol_reproduces_its_results(run_dir, tmp_path, iclft_main, monkeypatch):
    before = _snapshot(run_dir)
    _no_model(monkeypatch)
    out = tmp_path / "o"
    code, err = iclft_main("rescore", str(run_dir), "--protocol", "exact", "-o", str(out))
    assert code == 0, err
    for name in ("results.jsonl", "comparisons.jsonl", "config.json"):
        assert (out / name).read_bytes() == (run_dir / name).read_bytes(), name
    rows = _lines(out / "results.jsonl")
    assert {r["method"] for r in rows} == {"baseline", "icl", "ft-kv"}
    assert {r["split"] for r in rows} == {"test", "heldout"}
    assert {r["scoring"] for r in rows} == {"loglik", "generate"}
    assert {r.get("step") for r in rows if r["method"] == "ft-kv"} == {1, 2}
    assert any(r["demo_sets"] == 2 for r in rows)
    for st in (run_dir / "stages").iterdir():
        assert json.loads((out / "stages" / st.name).read_text()) == json.loads(st.read_text())
    for p in (run_dir / "predictions").iterdir():
        assert _lines(out / "predictions" / p.name) == _lines(p)
    assert _snapshot(run_dir) == before  # the source is left as it was
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "rescore"
    assert manifest["source"] == str(run_dir.resolve())
    assert manifest["outputs_generated_with"] == {"protocol": "exact", "stop": "newline"}
    assert manifest["note"] is None
    assert manifest["stages_rescored"] == ["m0-s0-icl", "m0-s0-ft-kv-eval"]


def test_another_protocol_rejudges_every_stage(run_dir, tmp_path, iclft_main):
    out = tmp_path / "o"
    code, err = iclft_main("rescore", str(run_dir), "--protocol", "paper", "-o", str(out))
    assert code == 0, err
    old, new = _lines(run_dir / "results.jsonl"), _lines(out / "results.jsonl")
    assert {r["protocol"] for r in new} == {"paper"}
    from iclft.records import CellResult

    key = ("model", "task", "variant", "method", "shots", "split", "demo_sets", "n")
    assert [[r.get(k) for k in key] for r in new] == [[r.get(k) for k in key] for r in old]
    for a, b in zip(old, new):  # what the runner added comes from the original row
        assert {f: a.get(f) for f in CellResult.ADDED_BY_RUNNER} == {
            f: b.get(f) for f in CellResult.ADDED_BY_RUNNER
        }
    preds = [p for f in sorted((out / "predictions").iterdir()) for p in _lines(f)]
    assert all(p["correct"] == (p["target"] in p["output"]) for p in preds)
    for r in new:
        cell = [p for p in preds if all(p.get(k) == r.get(k) for k in
                ("model", "task", "variant", "method", "shots", "split", "step"))]  # fmt: skip
        assert len(cell) == r["n_scored"]
        assert r["accuracy"] == pytest.approx(sum(p["correct"] for p in cell) / len(cell))
    stage = json.loads((out / "stages" / "m0-s0-icl.json").read_text())
    assert stage["results"] == [r for r in new if r["stage"] == "m0-s0-icl"]
    comps = _lines(out / "comparisons.jsonl")
    acc = {(r["task"], r["variant"], r["method"], r["shots"]): r["accuracy"]
           for r in new if r["split"] == "test" and r.get("checkpoint") is None}  # fmt: skip
    assert len(comps) == len(_lines(run_dir / "comparisons.jsonl"))
    for c in comps:
        assert c["accuracy_a"] == pytest.approx(acc[(c["task"], c["variant"], c["a_method"],
                                                     c["a_shots"])])  # fmt: skip
    assert json.loads((out / "config.json").read_text())["protocol"] == "paper"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs_generated_with"] == {"protocol": "exact", "stop": "newline"}
    assert "no stop" in manifest["note"]

    # the report builds from the rescored directory alone: curves and analysis copied, no weights
    assert list(out.glob("finetune/*/*/curves.csv")) and list(out.rglob("similarity.json"))
    assert not list(out.rglob("*.safetensors"))
    code, err = iclft_main("report", str(out))
    assert code == 0, err
    html = (out / "report.html").read_text()
    assert "Rescored without the model" in html and "similarity" in html.lower()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("protocol", "unknown protocol 'lenient'"),
        ("same", "another directory than the source"),
        ("inside", "a directory outside"),
        ("not-empty", "is not empty and was written by something other than iclft"),
        ("not-a-run", "not an `iclft eval` directory"),
        ("no-config", "no readable config.json"),
        ("rescored", "is itself a rescored run"),
    ],
)
def test_bad_input_is_one_line(case, message, run_dir, tmp_path, iclft_main):
    src, out, protocol = run_dir, tmp_path / "o", "paper"
    if case == "protocol":
        protocol = "lenient"
    elif case == "same":
        out = run_dir
    elif case == "inside":
        out = run_dir / "rescored"
    elif case == "not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "not-a-run":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "no-config":
        src = tmp_path / "half"
        (src / "stages").mkdir(parents=True)
    elif case == "rescored":
        assert iclft_main("rescore", str(run_dir), "-o", str(tmp_path / "first"))[0] == 0
        src = tmp_path / "first"
    before = _snapshot(run_dir)
    code, err = iclft_main("rescore", str(src), "--protocol", protocol, "-o", str(out))
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(run_dir) == before
    assert not (run_dir / "rescored").exists()


def test_rescoring_again_into_the_same_directory_replaces_it(run_dir, tmp_path, iclft_main):
    out = tmp_path / "o"
    assert iclft_main("rescore", str(run_dir), "--protocol", "paper", "-o", str(out))[0] == 0
    assert iclft_main("rescore", str(run_dir), "--protocol", "exact", "-o", str(out))[0] == 0
    assert (out / "results.jsonl").read_bytes() == (run_dir / "results.jsonl").read_bytes()
