"""Fixtures of the report tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .synthetic import write_run


@pytest.fixture
def make_run() -> Callable[..., Path]:
    """``make_run(root, **options)``: write a synthetic run directory (see ``write_run``)."""
    return write_run


@pytest.fixture(scope="session")
def full_report(tmp_path_factory):
    """A full synthetic run (two models, one a hub id; two seeds; every method, each
    fine-tuned model also evaluated at its step-10 checkpoint; curves and analysis outputs) and
    the :class:`ReportPaths` of its report, built once."""
    from iclft.report import build_report

    run = write_run(
        tmp_path_factory.mktemp("full") / "run",
        models=("smollm2-135m", "Qwen/Qwen1.5-0.5B"),
        seeds=(0, 1),
        checkpoints=(10,),
    )
    return build_report(run)
