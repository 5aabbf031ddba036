"""Experiment config validation: every problem at once, located, with the nearest name."""

from __future__ import annotations

import pytest

from iclft.config import load_experiment, packaged_config, validate_config
from iclft.errors import UserError


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
    assert "loglik needs choice tasks" in _err({"tasks": ["expression"], "scoring": "loglik"})
    msg = _err({"tasks": ["boolean"], "finetune_overrides": {"ft-full": {"lr": -1}}})
    assert "finetune_overrides.ft-full.lr" in msg
    assert "required setting is missing" in _err({})


@pytest.mark.parametrize("name", ["demo", "paper", "icl-vs-gd"])
def test_shipped_configs_validate(name):
    cfg = load_experiment(packaged_config(name))
    assert cfg.tasks and cfg.models


def test_unknown_shipped_config():
    with pytest.raises(UserError, match="shipped: "):
        packaged_config("nope")
