"""`iclft rescore`: the same protocol reproduces results.jsonl; another judges the saved outputs
again, with no model loaded; the source directory is untouched."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, save_tiny):
    from iclft.icl.evaluate import EvalSpec, run_eval

    d = save_tiny(tmp_path_factory.mktemp("rescore-model"), seed=2)
    out = tmp_path_factory.mktemp("rescore-eval")
    spec = EvalSpec(tasks=("boolean", "expression"), shots=(0, 1), n=3, seed=1, scoring="auto",
                    demo_sets=2)  # fmt: skip
    run_eval(spec, out, model=str(d), show_progress=False)
    return out


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_same_protocol_reproduces_the_results(eval_dir, tmp_path, iclft_main, monkeypatch):
    import transformers

    before = {p.name: p.read_bytes() for p in eval_dir.iterdir()}

    def no_model(*a, **k):
        raise AssertionError("rescore loaded a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    code, err = iclft_main("rescore", str(eval_dir), "--protocol", "exact", "-o", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "results.jsonl").read_bytes() == (eval_dir / "results.jsonl").read_bytes()
    assert _read(tmp_path / "predictions.jsonl") == _read(eval_dir / "predictions.jsonl")
    assert {p.name: p.read_bytes() for p in eval_dir.iterdir()} == before


def test_another_protocol_judges_the_saved_outputs(eval_dir, tmp_path, iclft_main):
    code, err = iclft_main("rescore", str(eval_dir), "--protocol", "paper", "-o", str(tmp_path))
    assert code == 0, err
    preds = _read(tmp_path / "predictions.jsonl")
    assert all(p["correct"] == (p["target"] in p["output"]) for p in preds)
    results = _read(tmp_path / "results.jsonl")
    assert {r["protocol"] for r in results} == {"paper"}
    for r in results:
        cell = [p for p in preds if (p["task"], p["variant"], p["shots"]) ==
                (r["task"], r["variant"], r["shots"])]  # fmt: skip
        assert r["accuracy"] == pytest.approx(sum(p["correct"] for p in cell) / len(cell))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["outputs_generated_with"] == {"protocol": "exact", "stop": "newline"}
    assert "no stop" in manifest["note"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "lenient"], "unknown protocol"),
        (["-o", "SRC"], "another directory than the source"),
    ],
)
def test_bad_input_is_one_line(args, message, eval_dir, tmp_path, iclft_main):
    args = [str(eval_dir) if a == "SRC" else a for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "o")]
    code, err = iclft_main("rescore", str(eval_dir), *args)
    assert code == 2 and message in err
    code, err = iclft_main("rescore", str(tmp_path), "-o", str(tmp_path / "x"))
    assert code == 2 and "not an `iclft eval` directory" in err
