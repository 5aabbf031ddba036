"""The runner's stage registry and model pool."""

from __future__ import annotations

from pathlib import Path

from iclft.layout import ft_dir
from iclft.run.config import validate_config
from iclft.run.plan import plan
from iclft.run.stages import STAGES, ModelPool, stage_loads

from .conftest import run_config


def test_every_planned_kind_is_registered_and_says_what_it_loads(tiny_dir):
    cfg = validate_config(
        run_config(
            tiny_dir,
            analysis={"circuits": {"enabled": True, "n": 1}, "similarity": {"enabled": True}},
        )
    )
    stages = plan(cfg)
    assert {s.kind for s in stages} == set(STAGES)
    root = Path("RUN")
    for s in stages:
        loads = stage_loads(cfg, s, root)
        assert loads and all(isinstance(x, str) for x in loads)
        if s.kind == "circuits":  # the base model and the first fine-tuned one
            assert loads == [str(tiny_dir), str(ft_dir(root, str(tiny_dir), "ft-kv", 0, 0))]
        if s.kind == "ft-eval":
            assert loads[0].endswith(s.method)


def test_the_pool_loads_each_model_once_and_releases_on_request(tiny_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    pool = ModelPool("cpu", "float32", capacity=2)
    a = pool.get(str(tiny_dir))
    assert pool.get(str(tiny_dir)) is a  # loaded once
    b = pool.get(str(other))
    assert pool.get(str(tiny_dir)) is a and pool.get(str(other)) is b
    pool.release(str(other))
    assert pool.get(str(other)) is not b  # released: loaded again
    third = tmp_path / "third"
    shutil.copytree(tiny_dir, third)
    pool.get(str(third))  # full: the least recently used (tiny_dir) goes
    assert pool.get(str(tiny_dir)) is not a
    pool.release()
    assert set(pool.resolved) == {str(tiny_dir), str(other), str(third)}
    assert all(r["attn_implementation"] == "sdpa" for r in pool.resolved.values())


def test_a_stage_that_needs_another_dtype_gets_its_own_copy(tiny_dir):
    """The similarity analysis runs in its own dtype (float32 by default) whatever the run's:
    the pool shares the run's model when the two resolve alike and loads a copy otherwise."""
    import torch

    pool = ModelPool("cpu", "auto")
    run = pool.get(str(tiny_dir))
    assert pool.get(str(tiny_dir), dtype="float32") is run  # auto is float32 on a CPU
    half = ModelPool("cpu", "bfloat16")
    bf16 = half.get(str(tiny_dir))
    fp32 = half.get(str(tiny_dir), dtype="float32")
    assert fp32 is not bf16 and half.get(str(tiny_dir)) is bf16
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert set(half.resolved) == {str(tiny_dir), f"{tiny_dir} [float32]"}


def test_releasing_a_model_releases_its_copy_at_another_dtype(tiny_dir):
    pool = ModelPool("cpu", "bfloat16")
    bf16 = pool.get(str(tiny_dir))
    fp32 = pool.get(str(tiny_dir), dtype="float32")
    pool.release(str(tiny_dir))
    assert pool.get(str(tiny_dir)) is not bf16
    assert pool.get(str(tiny_dir), dtype="float32") is not fp32
