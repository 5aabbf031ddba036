"""Nothing non-finite is trained or saved: settings are refused at every entry point, and a
real divergence (a learning rate that blows the weights up) stops cleanly with a manifest that
says why, the last good checkpoint kept, no final model, and a non-zero exit."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from iclft.errors import ModelError, TrainingDiverged, UserError
from iclft.finetune import make_config, run_finetune
from iclft.models.loading import resolve_model
from iclft.run.config import validate_config


def _cfg(model_dir, **kw):
    base = dict(
        model=str(model_dir),
        tasks=["boolean"],
        train_n=16,
        steps=6,
        batch_size=4,
        warmup_steps=0,
        schedule="constant",
        eval_every=1,
        eval_n=2,
        save_every=1,
    )
    return make_config(**{**base, **kw})


def _finite(directory) -> bool:
    files = list(directory.glob("*.safetensors"))
    assert files, f"no weights in {directory}"
    return all(torch.isfinite(t).all() for f in files for t in load_file(str(f)).values())


@pytest.mark.parametrize(
    "method,optimizer,lr",
    [("full", "sgd", 1e4), ("lora", "sgd", 1e8), ("kv", "adamw", 1e19)],
)
def test_a_real_divergence_stops_and_saves_nothing_non_finite(
    method, optimizer, lr, tiny_model_dir, tmp_path
):
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, method=method, optimizer=optimizer, lr=lr)
    with pytest.raises(TrainingDiverged) as info:
        run_finetune(cfg, out, show_progress=False)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "diverged"
    step = manifest["diverged"]["step"]
    assert f"at step {step}" in message and manifest["diverged"]["nonfinite_parameters"]
    good = manifest["last_good_checkpoint"]
    assert good and good.endswith(f"checkpoint-{step - 1}") and good in message
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == [f"checkpoint-{s}" for s in range(1, step)]
    assert all(_finite(c) for c in ckpts)  # every checkpoint on disk is good
    assert not list(out.glob("*.safetensors"))  # no final model
    rows = (out / "curves.csv").read_text().splitlines()[1:]
    assert {int(r.split(",")[0]) for r in rows} == set(range(step))  # no curve of bad weights
    assert all(math.isfinite(float(r.split(",")[2])) for r in rows if r.split(",")[2])
    with pytest.raises(ModelError, match=f"diverged at step {step}"):
        resolve_model(str(out))


def test_a_listed_checkpoint_of_the_diverged_step_is_not_saved(tiny_model_dir, tmp_path):
    """eval_checkpoints asks for a save at every step; the NaN guard still vetoes the bad one."""
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, method="full", optimizer="sgd", lr=1e4, save_every=0,
               eval_checkpoints=list(range(1, 7)))  # fmt: skip
    with pytest.raises(TrainingDiverged):
        run_finetune(cfg, out, show_progress=False)
    step = json.loads((out / "manifest.json").read_text())["diverged"]["step"]
    ckpts = sorted((out / "checkpoints").iterdir())
    assert step > 1 and [c.name for c in ckpts] == [f"checkpoint-{s}" for s in range(1, step)]
    assert all(_finite(c) for c in ckpts)


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-2000:]
    assert "Traceback" not in stderr
    return lines[-1]


def test_divergence_on_the_command_line_is_one_line_and_exit_3(
    tiny_model_dir, tmp_path, iclft_main
):
    out = tmp_path / "cli"
    code, err = iclft_main(
        "finetune", "--model", str(tiny_model_dir), "--tasks", "boolean", "--train-n", "16",
        "--steps", "6", "--lr", "1e4", "--optimizer", "sgd", "--method", "full",
        "--batch-size", "4", "--save-every", "1", "--eval-n", "2", "--warmup-steps", "0",
        "-o", str(out),
    )  # fmt: skip
    assert code == 3
    line = _error_line(err)
    assert "diverged at step 3" in line and "checkpoint-2" in line
    assert json.loads((out / "manifest.json").read_text())["status"] == "diverged"


BAD_FLOATS = ["inf", "-inf", "nan", "1e39"]


@pytest.mark.parametrize("value", BAD_FLOATS)
@pytest.mark.parametrize(
    "option", ["--lr", "--weight-decay", "--lora-alpha", "--lora-dropout", "--epochs"]
)
def test_cli_refuses_non_finite_settings_and_writes_nothing(option, value, tmp_path, iclft_main):
    out = tmp_path / "never"
    code, err = iclft_main(
        "finetune", "--method", "lora", "--tasks", "boolean", option, value, "-o", str(out)
    )
    assert code == 2
    line = _error_line(err)
    field = option.removeprefix("--").replace("-", "_").replace("lora_", "lora.")
    assert f"{field}: " in line
    if not math.isfinite(float(value)):
        assert f"{field}: must be a finite number, got {float(value):g}" in line
    assert not out.exists()


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+39"])
@pytest.mark.parametrize(
    "where",
    [
        ("finetune", "lr"),
        ("finetune", "weight_decay"),
        ("finetune", "lora_alpha"),
        ("analysis", "similarity", "lr"),
        ("finetune_overrides", "ft-lora", "lr"),
    ],
)
def test_yaml_refuses_non_finite_settings(where, value, tmp_path, iclft_main):
    data: dict = {"tasks": ["boolean"], "methods": ["ft-lora"]}
    node = data
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = yaml.safe_load(value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    code, err = iclft_main("run", str(path), "-o", str(tmp_path / "run"))
    assert code == 2
    assert f"{'.'.join(where)}: must be" in _error_line(err)
    assert not (tmp_path / "run").exists()


def test_python_api_refuses_non_finite_settings_even_past_validation(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="lr: must be a finite number"):
        make_config(model=str(tiny_model_dir), lr=float("inf"))
    with pytest.raises(UserError, match="finetune.lr: must be a finite number"):
        validate_config({"tasks": ["boolean"], "finetune": {"lr": float("nan")}})
    # model_copy skips pydantic's validation: run_finetune validates again before anything
    cfg = _cfg(tiny_model_dir).model_copy(update={"lr": float("inf")})
    with pytest.raises(UserError, match="lr: must be a finite number"):
        run_finetune(cfg, tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x").exists()


def test_a_run_whose_fine_tuning_diverges_stops_and_says_which_stage(
    tiny_model_dir, tmp_path, iclft_main
):
    config = {
        "models": [str(tiny_model_dir)],
        "tasks": ["boolean"],
        "methods": ["baseline", "ft-full"],
        "n": 2,
        "device": "cpu",
        "finetune": {"train_n": 16, "steps": 6, "lr": 1e4, "optimizer": "sgd", "batch_size": 4,
                     "schedule": "constant", "save_every": 1, "eval_n": 2},
    }  # fmt: skip
    path, run_dir = tmp_path / "c.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    code, err = iclft_main("run", str(path), "-o", str(run_dir))
    assert code == 3
    line = _error_line(err)
    assert line.startswith("error: stage m0-s0-ft-full-train: training diverged at step")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "diverged" and manifest["failed_stage"] == "m0-s0-ft-full-train"
    assert manifest["stages_ran"] == 1  # the baseline stage, whose rows are kept
    assert {r["method"] for r in map(json.loads, (run_dir / "results.jsonl").open())} == {
        "baseline"
    }
