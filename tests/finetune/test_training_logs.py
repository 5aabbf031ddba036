"""Training logs: off by default; with ``report_to: [tensorboard]`` the loss, learning rate and
the curve points of curves.csv reach TensorBoard through the Trainer's integration."""

from __future__ import annotations

import csv

import pytest

from iclft.errors import UserError
from iclft.finetune.config import make_config
from iclft.finetune.train import run_finetune


def _cfg(model_dir, **kw):
    base = dict(model=str(model_dir), tasks=["boolean"], train_n=8, steps=2, lr=1e-3,
                batch_size=4, warmup_steps=0, eval_every=1, eval_n=2, method="kv")  # fmt: skip
    return make_config(**{**base, **kw})


def test_tensorboard_gets_the_loss_and_the_curve(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    off = tmp_path / "off"
    run_finetune(_cfg(tiny_model_dir), off, show_progress=False)
    assert not (off / "tensorboard").exists()

    out = tmp_path / "tb"
    run_finetune(_cfg(tiny_model_dir, report_to=["tensorboard"]), out, show_progress=False)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate"} <= tags
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    for variant in ("clean", "misleading"):
        tag = f"train/curve/boolean/{variant}/accuracy"  # the Trainer prefixes train/
        assert tag in tags
        logged = [e.value for e in events.Scalars(tag)]
        want = [float(r["accuracy"]) for r in rows if r["variant"] == variant]
        assert logged == pytest.approx(want)  # before training, after each step, at the end
    # the weights do not depend on logging
    from safetensors.torch import load_file

    a, b = load_file(str(off / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


def test_an_unknown_logger_is_one_line():
    with pytest.raises(UserError, match="unknown training logger 'mlflow'.*allowed: tensorboard"):
        make_config(report_to=["mlflow"])
