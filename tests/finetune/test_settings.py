"""One settings model: the experiment's ``finetune:`` block, ``iclft finetune``'s options and a
run's config share its fields; the method names come from the strategy registry."""

from __future__ import annotations

import inspect

import pytest

from iclft.errors import UnknownNameError, UserError
from iclft.finetune.config import (
    EXPERIMENT_DEFAULTS,
    FinetuneConfig,
    TrainingSettings,
    make_config,
)
from iclft.finetune.methods import METHOD_NAMES, PARAM_SET_NAMES, get_method
from iclft.records import arms, ft_method, is_finetune
from iclft.run.config import validate_config


def test_cli_options_are_the_settings_fields_each_with_help():
    from iclft.cli.finetune import finetune_command

    options = set(inspect.signature(finetune_command).parameters)
    assert options == {"output", "config", "resume", "force", *FinetuneConfig.model_fields}
    assert set(TrainingSettings.model_fields) < set(FinetuneConfig.model_fields)
    missing = [n for n, f in FinetuneConfig.model_fields.items() if not f.description]
    assert not missing


def test_help_lists_every_flag_and_short_option():
    from typer.testing import CliRunner

    from iclft.cli import app

    res = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "240"})
    assert res.exit_code == 0
    for name in FinetuneConfig.model_fields:
        assert f"--{name.replace('_', '-')}" in res.output, name
    for short in ("-m", "-t", "-b", "-s", "-o", "-c"):
        assert f" {short} " in res.output
    assert "the global batch" in res.output and "(default: 16)" in res.output


def test_experiment_defaults_differ_from_the_cli_only_by_the_preset():
    experiment = validate_config({"tasks": ["boolean"]}).finetune.model_dump()
    cli = TrainingSettings().model_dump()
    assert {k for k in cli if cli[k] != experiment[k]} == set(EXPERIMENT_DEFAULTS)
    assert {k: experiment[k] for k in EXPERIMENT_DEFAULTS} == EXPERIMENT_DEFAULTS
    given = validate_config({"tasks": ["boolean"], "finetune": {"lr": 3e-4}}).finetune
    assert (given.lr, given.steps) == (3e-4, EXPERIMENT_DEFAULTS["steps"])


def test_an_experiment_fine_tunes_for_a_number_of_steps():
    for block in ({"epochs": 2}, {"steps": None}):
        with pytest.raises(UserError, match="finetune.steps: a run fine-tunes for a number of"):
            validate_config({"tasks": ["boolean"], "finetune": block})


def test_lora_settings_nested_as_in_the_run_file_or_flat():
    nested = make_config(method="lora", lora={"rank": 4, "target_modules": ["q_proj"]})
    flat = make_config(method="lora", lora_rank=4, lora_targets=["q_proj"])
    assert nested == flat and nested.lora_rank == 4
    saved = nested.model_dump()
    assert saved["lora"] == {"rank": 4, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj"]}
    assert "lora_rank" not in saved and make_config(**saved) == nested
    with pytest.raises(UserError, match=r"lora\.rnk: unknown setting; allowed: rank, alpha"):
        make_config(method="lora", lora={"alpha": 2.0, "rnk": 4})


def test_method_names_come_from_the_registry():
    assert tuple(ft_method(a) for a in arms() if is_finetune(a)) == METHOD_NAMES
    assert arms()[2:] == tuple(f"ft-{m}" for m in METHOD_NAMES)
    for name in PARAM_SET_NAMES:
        inner = get_method(name)
        causal = get_method("layer-causal", name)
        assert (causal.parameters, causal.saves_adapter) == (inner.parameters, inner.saves_adapter)
    assert get_method("lora").saves_adapter and not get_method("kv").saves_adapter
    with pytest.raises(UnknownNameError, match="unknown method 'ful' \\(did you mean 'full'"):
        get_method("ful")
    with pytest.raises(UnknownNameError, match="unknown parameter set"):
        get_method("layer-causal", "everything")
    with pytest.raises(UserError, match="unknown optimizer 'adam' \\(did you mean 'adamw'"):
        make_config(optimizer="adam")


def test_the_batch_is_global_and_must_split_evenly():
    """``batch_size`` is the global batch under iclft finetune as under iclft run: N processes
    take batch_size / N rows each, and a batch they cannot share equally is refused."""
    from iclft.finetune.config import per_process_batch

    assert per_process_batch(16, 1) == 16 and per_process_batch(16, 4) == 4
    with pytest.raises(UserError, match="batch_size 6 cannot be split across 4 processes"):
        per_process_batch(6, 4)
