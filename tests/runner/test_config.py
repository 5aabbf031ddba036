"""Experiment config validation: every problem at once, located, with the nearest name."""

from __future__ import annotations

import pytest

from iclft.errors import UserError
from iclft.run.config import load_experiment, packaged_config, validate_config


def _err(data) -> str:
    with pytest.raises(UserError) as e:
        validate_config(data, "x.yaml")
    return str(e.value)


def test_every_problem_is_reported_with_location_and_suggestion():
    msg = _err(
        {
            "tasks": ["expression", "expresion"],
            "methods": ["baseline", "icl", "ft-ful"],
            "shots": [-1, 2],
            "finetune": {"lr": 0, "stepz": 3},
            "modles": ["x"],
        }
    )
    assert msg.startswith("x.yaml: ")
    assert "methods[2]: unknown method 'ft-ful' (did you mean 'ft-full'?)" in msg
    assert "tasks[1]: unknown task 'expresion' (did you mean 'expression'?)" in msg
    assert "shots[0]:" in msg and "finetune.lr:" in msg and "finetune.stepz: unknown" in msg
    assert "modles: unknown setting (did you mean 'models'?)" in msg
    assert "\n" not in msg


def test_cross_field_checks():
    assert "scoring: loglik scoring needs choice tasks" in _err(
        {"tasks": ["expression"], "scoring": "loglik"}
    )
    msg = _err({"tasks": ["boolean"], "finetune_overrides": {"ft-full": {"lr": -1}}})
    assert "finetune_overrides.ft-full.lr" in msg
    assert "required setting is missing" in _err({})


@pytest.mark.parametrize(
    "name",
    sorted(
        p.stem for p in packaged_config("demo").parent.glob("*.yaml") if "finetune" not in p.stem
    ),
)
def test_shipped_configs_validate(name):
    cfg = load_experiment(packaged_config(name))
    assert cfg.tasks and cfg.models


def test_unknown_shipped_config():
    with pytest.raises(UserError, match="shipped: "):
        packaged_config("nope")


@pytest.mark.parametrize(
    "checkpoints, message",
    [
        ([0, 10], "finetune.eval_checkpoints: step 0 is not positive; allowed: steps from 1 to 30"),
        ([10, 40], "finetune.eval_checkpoints: step 40 is beyond the run's 30 steps; allowed: "),
        ([10, 5, 10], "finetune.eval_checkpoints: step 10 is listed twice; allowed: "),
        (["ten"], "finetune.eval_checkpoints[0]: "),
    ],
)
def test_eval_checkpoints_must_be_steps_of_the_run(checkpoints, message):
    data = {"tasks": ["boolean"], "methods": ["ft-full"], "finetune": {"steps": 30}}
    data["finetune"]["eval_checkpoints"] = checkpoints
    msg = _err(data)
    assert message in msg and "\n" not in msg


def test_eval_checkpoints_are_sorted_and_take_per_method_overrides():
    data = {
        "tasks": ["boolean"],
        "methods": ["ft-full", "ft-lora", "ft-kv"],
        "finetune": {"steps": 300, "eval_checkpoints": [300, 100]},
        "finetune_overrides": {"ft-lora": {"eval_checkpoints": []}},
    }
    cfg = validate_config(data)
    assert cfg.finetune_for("ft-full").eval_checkpoints == [100, 300]
    assert cfg.finetune_for("ft-lora").eval_checkpoints == []
    assert validate_config({"tasks": ["boolean"]}).finetune.eval_checkpoints == []
    data["finetune_overrides"] = {"ft-kv": {"steps": 50}}
    assert "finetune_overrides.ft-kv.eval_checkpoints: step 100 is beyond the run's 50 steps" in (
        _err(data)
    )


def test_the_paper_config_evaluates_step_100_of_300():
    cfg = load_experiment(packaged_config("paper"))
    ft = cfg.finetune_for("ft-full")
    assert (ft.steps, ft.eval_checkpoints, ft.lr, ft.warmup_steps) == (300, [100, 300], 1e-5, 20)
    assert (ft.batch_size * ft.grad_accum, ft.train_n, ft.loss_on) == (16, 1000, "full")


def test_batch_size_is_a_positive_integer_or_auto():
    base = {"models": ["m"], "tasks": ["boolean"]}
    assert validate_config({**base, "batch_size": "auto"}).batch_size == "auto"
    assert validate_config({**base, "batch_size": 8}).batch_size == 8
    for bad in (0, -2, "big", True, 1.5):
        msg = _err({**base, "batch_size": bad})
        assert "batch_size: batch size must be a positive integer or 'auto'" in msg, bad


@pytest.mark.parametrize(
    "section, message",
    [
        ({"circuits": {"shots": 0}}, "analysis.circuits.shots: must be >= 1"),
        ({"circuits": {"estimator": "exakt"}}, "analysis.circuits.estimator: unknown patching"),
        ({"circuits": {"share": 2}}, "analysis.circuits.share: must be <= 1"),
        ({"similarity": {"lr": []}}, "analysis.similarity.lr: must be a positive finite number"),
        ({"similarity": {"keys": "all"}}, "analysis.similarity.keys: unknown SimAM key set"),
    ],
)
def test_an_analysis_that_cannot_run_is_refused_when_the_config_is_loaded(
    section, message, tmp_path
):
    """A setting the analysis would refuse is refused at load, with the file and the key
    (before: circuits shots 0 passed the config and failed only when its stage ran)."""
    import yaml

    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["boolean"], "analysis": section}))
    with pytest.raises(UserError) as e:
        load_experiment(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


@pytest.mark.parametrize("command", ["circuits", "similarity"])
def test_the_command_and_the_config_read_one_settings_model(command):
    """Every analysis setting is one field: the config section's defaults are the command's,
    and each field is an option of the command whose help shows that same default."""
    from typer.testing import CliRunner

    from iclft.analysis.settings import CircuitSettings, SimilaritySettings
    from iclft.cli import app
    from iclft.run.config import AnalysisSettings

    model = {"circuits": CircuitSettings, "similarity": SimilaritySettings}[command]
    section = getattr(AnalysisSettings(), command)
    assert section.model_dump(include=set(model.model_fields)) == model().model_dump()
    out = CliRunner().invoke(app, ["analyze", command, "--help"], env={"COLUMNS": "400"}).output
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None or isinstance(default, tuple):
            continue
        assert f"(default: {default})" in out, (name, default)


def test_iclft_eval_and_the_config_read_one_evaluation_settings_model():
    """The config's evaluation settings are EvalSettings' fields (defaults, bounds), and each
    is an option of `iclft eval` whose help shows that default; a bad value is refused by the
    same bound from both, naming the key or the flag."""
    from typer.testing import CliRunner

    from iclft.cli import app
    from iclft.icl.settings import EvalSettings

    cfg = validate_config({"tasks": ["boolean"]})
    assert cfg.model_dump(include=set(EvalSettings.model_fields)) == EvalSettings().model_dump()
    out = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "400"}).output
    for name, field in EvalSettings.model_fields.items():
        assert f"(default: {field.default})" in out, name
    assert "demo_sets: must be <= 32" in _err({"tasks": ["boolean"], "demo_sets": 33})
    res = CliRunner().invoke(app, ["eval", "-t", "boolean", "--demo-sets", "33", "-o", "x"])
    assert isinstance(res.exception, UserError)  # the entry point prints it, exit code 2
    assert "--demo-sets: must be <= 32" in str(res.exception)


def test_the_circuits_estimators_old_name_is_read_as_the_new():
    """Configs written before the patching estimator had its own word call it ``method``: they
    load with the same meaning, and a wrong value is still refused under either name."""
    old = validate_config({"tasks": ["parity"], "analysis": {"circuits": {"method": "exact"}}}, "x")
    assert old.analysis.circuits.estimator == "exact"
    new = validate_config(
        {"tasks": ["parity"], "analysis": {"circuits": {"estimator": "exact"}}}, "x"
    )
    assert new == old
    assert "unknown patching estimator 'magic'" in _err(
        {"tasks": ["parity"], "analysis": {"circuits": {"method": "magic"}}}
    )
