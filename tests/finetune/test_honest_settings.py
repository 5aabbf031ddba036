"""Settings that would train nothing or be ignored are refused, in one line: a warm-up as long
as the run (learning rate 0 at every step), and --params or LoRA settings a method does not
read; the manifest records the learning rate each step was trained at."""

from __future__ import annotations

import json

import pytest

from iclft.errors import UserError
from iclft.finetune import make_config, run_finetune
from iclft.finetune.config import check_schedule, schedule_rates
from iclft.run.config import validate_config


def _cfg(model_dir, **kw):
    base = dict(model=str(model_dir), tasks=["boolean"], train_n=8, steps=3, lr=1e-2,
                batch_size=4, warmup_steps=0, eval_every=0, eval_n=2)  # fmt: skip
    return make_config(**{**base, **kw})


def test_the_schedules_rates_are_the_trainers():
    """transformers' warm-up starts at 0: --steps 1 with 20 warm-up steps trains at 0."""
    assert schedule_rates("constant_with_warmup", 1e-5, 20, 1) == [0.0]
    assert schedule_rates("constant_with_warmup", 1.0, 2, 4) == [0.0, 0.5, 1.0, 1.0]
    assert schedule_rates("linear", 1.0, 0, 4) == [1.0, 0.75, 0.5, 0.25]
    assert schedule_rates("constant", 0.1, 20, 2) == [0.1, 0.1]  # constant has no warm-up
    with pytest.raises(ValueError, match="warmup_steps 20 is not below the run's 1 step:"):
        check_schedule("constant_with_warmup", 1e-5, 20, 1)
    with pytest.raises(ValueError, match="warmup_steps 4 is not below the run's 4 steps"):
        check_schedule("cosine", 1e-5, 4, 4)
    check_schedule("linear", 1e-5, 3, 4)
    check_schedule("constant", 1e-5, 20, 1)


@pytest.mark.parametrize(
    "settings",
    [
        {"steps": 1},  # the issue: --steps 1 with the default 20 warm-up steps
        {"steps": 20},
        {"steps": 5, "warmup_steps": 9, "schedule": "linear"},
    ],
)
def test_a_warmup_as_long_as_the_run_is_refused(settings):
    with pytest.raises(UserError, match="warmup_steps .* is not below the run's"):
        make_config(**settings)
    block = {"warmup_steps": 20, **settings}  # an experiment's preset has no warm-up
    with pytest.raises(UserError, match="finetune: warmup_steps .* is not below the run's"):
        validate_config({"tasks": ["boolean"], "finetune": block})
    over = {"tasks": ["boolean"], "methods": ["ft-full"], "finetune_overrides": {"ft-full": block}}
    with pytest.raises(UserError, match="finetune_overrides.ft-full.*warmup_steps .* not below"):
        validate_config(over)


def test_the_cli_refuses_it_in_one_line(tmp_path, iclft_main):
    code, err = iclft_main("finetune", "--steps", "1", "-o", str(tmp_path / "ft"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "warmup_steps 20 is not below the run's 1 step" in err and "--warmup-steps 0" in err
    assert not (tmp_path / "ft").exists()


def test_a_warmup_longer_than_an_epoch_run_is_refused_before_the_first_step(
    tiny_model_dir, tmp_path
):
    """With --epochs the data decides the run's length: checked when the Trainer knows it."""
    out = tmp_path / "ep"
    cfg = _cfg(tiny_model_dir, steps=None, epochs=1.0, warmup_steps=5)  # 8 texts / 4: 2 steps
    with pytest.raises(UserError, match="warmup_steps 5 is not below the run's 2 steps"):
        run_finetune(cfg, out, show_progress=False)
    assert not (out / "model.safetensors").exists() and not (out / "manifest.json").exists()


def test_the_manifest_records_the_rate_of_each_step(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, steps=3, warmup_steps=2, schedule="constant_with_warmup")
    run_finetune(cfg, tmp_path / "ft", show_progress=False)
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["learning_rates"] == {"1": 0.0, "2": 0.005, "3": 0.01}
    assert list(manifest["learning_rates"].values()) == schedule_rates(
        "constant_with_warmup", 1e-2, 2, 3
    )


@pytest.mark.parametrize(
    "settings,flag",
    [
        ({"method": "lora", "params": "full"}, "--params"),
        ({"method": "full", "params": "lora"}, "--params"),
        ({"method": "kv", "lora_rank": 4}, "--lora-rank"),
        ({"method": "full", "lora": {"alpha": 4.0}}, "--lora-alpha"),
        ({"method": "layer-causal", "params": "kv", "lora_dropout": 0.1}, "--lora-dropout"),
    ],
)
def test_settings_a_method_ignores_are_refused(settings, flag):
    with pytest.raises(UserError, match=f"{flag} would be ignored by method"):
        make_config(**settings)


def test_settings_a_method_reads_are_accepted():
    assert make_config(method="layer-causal", params="lora", lora_rank=4).lora_rank == 4
    assert make_config(method="layer-causal", params="full").params == "full"
    assert make_config(method="lora", lora_rank=2).model_dump()["lora"]["rank"] == 2
    saved = make_config(method="lora", lora_rank=2).model_dump()
    assert make_config(**saved).lora_rank == 2  # a saved run's settings validate again


def test_lora_with_params_is_refused_on_the_command_line(tmp_path, iclft_main):
    code, err = iclft_main("finetune", "--method", "lora", "--params", "full", "-o",
                           str(tmp_path / "ft"))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--params would be ignored by method lora" in err


def test_an_experiment_refuses_settings_none_of_its_methods_reads(tiny_model_dir):
    base = {"models": [str(tiny_model_dir)], "tasks": ["boolean"], "shots": [0]}
    with pytest.raises(UserError, match=r"finetune.params: read by none of this run's methods"):
        validate_config({**base, "methods": ["ft-lora"], "finetune": {"params": "full"}})
    with pytest.raises(UserError, match=r"finetune_overrides.ft-full.lora_rank: ft-full does not"):
        validate_config({**base, "methods": ["ft-full"], "finetune_overrides": {
            "ft-full": {"lora": {"rank": 2}}}})  # fmt: skip
    cfg = validate_config({**base, "methods": ["ft-lora", "ft-layer-causal"],
                           "finetune": {"params": "full", "lora": {"rank": 2}}})  # fmt: skip
    assert cfg.finetune.params == "full"  # read by layer-causal; lora reads the rank


def test_a_finished_run_is_resumed_not_mixed_and_force_moves_it_aside(
    tiny_model_dir, tmp_path, monkeypatch
):
    import iclft.models.loading as loading
    from iclft.store import LOCK_NAME, OWNER_NAME

    out = tmp_path / "ft"
    cfg = _cfg(tiny_model_dir, steps=1)
    run_finetune(cfg, out, show_progress=False)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="already holds this run; pass --resume"):
        run_finetune(cfg, out, show_progress=False)
    with pytest.raises(UserError, match=r"different fine-tuning run \(settings differ: lr\)"):
        run_finetune(_cfg(tiny_model_dir, steps=1, lr=0.5), out, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == before

    def stop(*a, **k):  # the check is done; nothing needs training here
        raise AssertionError("loaded")

    monkeypatch.setattr(loading, "load_model", stop)
    with pytest.raises(AssertionError, match="loaded"):
        run_finetune(_cfg(tiny_model_dir, steps=1, lr=0.5), out, show_progress=False, force=True)
    moved = sorted(p.name for p in (tmp_path / "ft.replaced-1").iterdir())
    assert moved == [n for n in before if n != LOCK_NAME]  # the lock stays with the directory
    assert OWNER_NAME in before and "model.safetensors" in before
