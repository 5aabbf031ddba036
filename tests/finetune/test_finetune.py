"""Fine-tuning runs on a tiny saved model: methods, outputs, resume, validation.
(Divergence and non-finite settings: test_divergence.py.)"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from iclft.errors import UserError
from iclft.finetune import make_config, run_finetune
from iclft.finetune.data import demonstrations
from iclft.finetune.train import saved_settings
from iclft.tasks import get_task
from iclft.tasks.splits import scored_questions


def _cfg(model_dir, **kw):
    base = dict(
        model=str(model_dir),
        tasks=["boolean"],
        train_n=16,
        steps=4,
        lr=1e-3,
        batch_size=4,
        warmup_steps=0,
        eval_every=2,
        eval_n=4,
    )
    return make_config(**{**base, **kw})


def _weights(d):
    return load_file(str(d / "model.safetensors"))


@pytest.mark.parametrize("method", ["full", "kv", "layer-causal"])
def test_methods_train_and_save_a_loadable_model(method, tiny_model_dir, tmp_path):
    from iclft.models import load_model

    out = tmp_path / method
    res = run_finetune(_cfg(tiny_model_dir, method=method), out, show_progress=False)
    assert res.steps == 4 and res.final_loss is not None
    before, after = _weights(tiny_model_dir), _weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if method == "full":
        assert any("mlp" in k for k in changed)
    else:  # kv, and layer-causal with its default kv selection
        assert changed and all(("k_proj" in k or "v_proj" in k) for k in changed)
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4]
    assert {(r["task"], r["variant"]) for r in rows} == {
        ("boolean", "clean"),
        ("boolean", "misleading"),
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["steps"] == 4
    lm = load_model(str(out))
    assert lm.resolved.kind == "local"


def test_lora_saves_an_adapter_that_eval_accepts(tiny_model_dir, tmp_path):
    from iclft.icl.evaluate import EvalSpec, run_eval

    out = tmp_path / "lora"
    run_finetune(_cfg(tiny_model_dir, method="lora", lr=1e-2), out, show_progress=False)
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    spec = EvalSpec(tasks=("boolean",), shots=(0,), n=2)
    res = run_eval(spec, tmp_path / "eval", model=str(out), show_progress=False)
    assert len(res.predictions) == 4
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert manifest["model"]["is_adapter"] is True


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, steps=6, save_every=3, eval_every=0)
    run_finetune(cfg, tmp_path / "a", show_progress=False)
    run_finetune(cfg, tmp_path / "b", show_progress=False, extra_callbacks=[_StopAt(3)])
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-3").exists()
    res = run_finetune(cfg, tmp_path / "b", resume=True, show_progress=False)
    assert res.steps == 6
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_demonstrations_mode_is_one_sgd_epoch_in_prompt_order(tiny_model_dir, tmp_path):
    cfg = _cfg(
        tiny_model_dir,
        data="demonstrations",
        shots=5,
        method="kv",
        lr=0.05,
        eval_every=0,
        loss_on="full",
    )
    res = run_finetune(cfg, tmp_path / "d", show_progress=False)
    assert res.steps == 5  # batch 1, one epoch over k demonstrations


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr": 0}, "learning rate must be > 0"),
        ({"lr": -1e-3}, "learning rate must be > 0"),
        ({"method": "ful"}, "did you mean 'full'"),
        ({"tasks": ["nope"]}, "unknown task"),
        ({"optimizer": "adam"}, "allowed: adamw, sgd"),
        ({"eval_checkpoints": [2, 5]}, "eval_checkpoints: step 5 is beyond the run's 4 steps"),
        ({"eval_checkpoints": [-1]}, "eval_checkpoints: step -1 is not positive"),
        ({"eval_checkpoints": [2, 2]}, "eval_checkpoints: step 2 is listed twice"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match, tiny_model_dir):
    with pytest.raises(UserError, match=match):
        _cfg(tiny_model_dir, **kwargs)


def test_checks_happen_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    import iclft.models.loading as loading

    def boom(*a, **k):
        raise AssertionError("model loaded before validation")

    monkeypatch.setattr(loading, "load_model", boom)
    bad = _cfg(tiny_model_dir, method="lora", lora={"target_modules": ["nonexistent_proj"]})
    with pytest.raises(UserError, match="nonexistent_proj"):
        run_finetune(bad, tmp_path / "l", show_progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train_config.json").write_text(
        json.dumps(saved_settings(_cfg(tiny_model_dir, lr=0.5)))
    )
    with pytest.raises(UserError, match="different fine-tuning run"):
        run_finetune(_cfg(tiny_model_dir), tmp_path / "other", show_progress=False)


def test_in_memory_gd_equals_trainer_demonstrations_mode(tiny_model_dir, tmp_path):
    from iclft.finetune.gd import sgd_on_demonstrations
    from iclft.models import load_model

    cfg = _cfg(tiny_model_dir, data="demonstrations", shots=4, method="kv", lr=0.05,
               eval_every=0, loss_on="full")  # fmt: skip
    run_finetune(cfg, tmp_path / "t", show_progress=False)
    lm = load_model(str(tiny_model_dir))
    # the run's demonstrations skip its scored questions (here one of them is one)
    avoid = scored_questions(get_task("boolean"), 0, test_n=cfg.test_n, heldout_n=cfg.heldout_n)
    assert demonstrations("boolean", 4, 0, avoid) != demonstrations("boolean", 4, 0)
    new = sgd_on_demonstrations(lm.model, lm.tokenizer, "boolean", 4, 0, 0.05, avoid=avoid)
    trained = _weights(tmp_path / "t")
    for name, p in new.named_parameters():
        torch.testing.assert_close(p.detach(), trained[name], rtol=1e-5, atol=1e-6)
    base = _weights(tiny_model_dir)
    assert any(not torch.equal(base[n], p.detach()) for n, p in new.named_parameters())


def test_trainer_and_in_memory_gd_agree_when_gradients_are_far_above_one(tmp_path, save_tiny):
    """Neither path clips (the reference uses no clipping): with K/V gradient norms ~10, a
    clipped path (max_grad_norm=1) would move the weights several times less than the other."""
    from iclft.finetune.data import TokenizedTexts, demonstration_texts
    from iclft.finetune.gd import sgd_on_demonstrations
    from iclft.finetune.methods import kv_parameters
    from iclft.models import load_model

    d = save_tiny(tmp_path / "big-init", seed=3, initializer_range=1.0)
    lm = load_model(str(d))
    kv = {p.name for p in kv_parameters(lm.model)}
    rows = TokenizedTexts(demonstration_texts("boolean", 4, 0), lm.tokenizer, "full", 10_000).rows
    for r in rows:  # the precondition: every step's gradient norm is far above 1
        lm.model.zero_grad()
        ids, labels = torch.tensor([r["input_ids"]]), torch.tensor([r["labels"]])
        lm.model(input_ids=ids, labels=labels).loss.backward()
        norm = sum(float(p.grad.pow(2).sum()) for n, p in lm.model.named_parameters() if n in kv)
        assert norm**0.5 > 5
    lm.model.zero_grad()

    # no scored questions to skip: the run's demonstrations are the pool's first four
    cfg = _cfg(d, data="demonstrations", shots=4, method="kv", lr=0.01, eval_every=0,
               loss_on="full", test_n=0, heldout_n=0)  # fmt: skip
    run_finetune(cfg, tmp_path / "t", show_progress=False)
    new = sgd_on_demonstrations(lm.model, lm.tokenizer, "boolean", 4, 0, 0.01)
    trained, base = _weights(tmp_path / "t"), _weights(d)
    moved = 0.0
    for name, p in new.named_parameters():
        torch.testing.assert_close(p.detach(), trained[name], rtol=1e-4, atol=1e-5)
        moved += float((p.detach() - base[name]).pow(2).sum())
    assert moved**0.5 > 0.1  # 4 unclipped steps of lr 0.01 x gradient norm > 5


def test_lora_runs_are_reproducible_whatever_ran_before(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, method="lora", steps=2, eval_every=0, lr=1e-2)
    run_finetune(cfg, tmp_path / "a", show_progress=False)
    torch.rand(1000)  # consume the global generator, as earlier stages of a run would
    run_finetune(cfg, tmp_path / "b", show_progress=False)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_listed_checkpoints_are_saved_whatever_save_every_and_load(
    tiny_model_dir, tmp_path, iclft_main
):
    """``--eval-checkpoints 3,1`` with ``--save-every 2`` of 4 steps: steps 1 and 3 are saved
    beside 2 and 4; each listed one is a model, a LoRA checkpoint naming its base as given."""
    from iclft.models import load_model

    out = tmp_path / "lora"
    code, err = iclft_main(
        "finetune", "--model", str(tiny_model_dir), "--method", "lora", "--tasks", "boolean",
        "--train-n", "16", "--steps", "4", "--batch-size", "4", "--eval-n", "2", "--lr", "1e-2",
        "--warmup-steps", "0", "--save-every", "2", "--eval-checkpoints", "3,1", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "train_config.json").read_text())["eval_checkpoints"] == [1, 3]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"checkpoint-{s}" for s in (1, 2, 3, 4)]
    for step in (1, 3):
        d = out / "checkpoints" / f"checkpoint-{step}"
        adapter = json.loads((d / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
        lm = load_model(str(d), device="cpu")
        assert lm.resolved.is_adapter and lm.resolved.base_spec == str(tiny_model_dir)


@pytest.mark.parametrize(
    "value, message",
    [
        ("1,x", "--eval-checkpoints must be comma-separated integers, got '1,x'"),
        ("0,100", "eval_checkpoints: step 0 is not positive; allowed: steps from 1 to 300"),
    ],
)
def test_cli_refuses_bad_eval_checkpoints_in_one_line(value, message, tmp_path, iclft_main):
    out = tmp_path / "never"
    code, err = iclft_main("finetune", "--eval-checkpoints", value, "-o", str(out))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not out.exists()


def test_eval_checkpoints_beyond_an_epoch_run_are_refused_before_training(tiny_model_dir, tmp_path):
    """With --epochs the data decides the length (16 texts / batch 4 = 4 steps): a listed step
    beyond it is refused before the first step."""
    cfg = _cfg(tiny_model_dir, steps=None, epochs=1, eval_every=0, eval_checkpoints=[2, 9])
    with pytest.raises(UserError, match="eval_checkpoints: step 9 is beyond the run's 4 steps"):
        run_finetune(cfg, tmp_path / "e", show_progress=False)
    assert not list((tmp_path / "e").rglob("checkpoint-*"))
    assert not (tmp_path / "e" / "curves.csv").exists()  # not even step 0 was evaluated
