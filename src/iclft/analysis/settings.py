"""The analyses' settings, each declared once (default, bounds, help text on the field): the
options of ``iclft analyze circuits`` and ``iclft analyze similarity`` are generated from these
models (:mod:`iclft.cli.fields`), and an experiment config's ``analysis.circuits`` and
``analysis.similarity`` sections are the same models (:mod:`iclft.run.config`). A ``*Spec`` is the
settings applied to one task with one seed: what a pipeline runs. Everything is validated when
it is built, before any model is loaded. No torch here: the config reads this module."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from iclft.analysis.similarity_table import KEY_SETS
from iclft.icl.settings import TaskName
from iclft.models.loading import DTYPES
from iclft.names import CIRCUIT_RENAMED, ESTIMATORS, PATCH_POSITIONS, PER_POSITION_KINDS
from iclft.records import renamed_keys
from iclft.stats import N_PERMUTATIONS
from iclft.validation import FLOAT32_MAX, Settings, known

#: split-halves drawn for each shift's noise floor, unless told otherwise
N_SPLITS = 100


def _pair_tasks() -> list[str]:
    from iclft.analysis.pairs import pair_tasks

    return list(pair_tasks())


class CircuitSettings(Settings):
    """The circuits analysis's settings, each declared once: ``iclft analyze circuits``'s
    options are generated from these fields and a run's ``analysis.circuits`` section is this
    model (plus which tasks, and whether it runs)."""

    shots: int = Field(4, ge=1, description="Demonstrations in the ICL setting.")
    n: int = Field(20, ge=1, description="Clean/corrupt pairs per task.")
    estimator: Annotated[str, known("patching estimator", ESTIMATORS)] = Field(
        "attribution", description=f"Patching estimator: {' or '.join(ESTIMATORS)}."
    )
    positions: Annotated[str, known("positions", PATCH_POSITIONS)] = Field(
        "query", description=f"Positions patched: {', '.join(PATCH_POSITIONS)}."
    )
    top_k: int = Field(20, ge=1, description="Circuit size (ignored with share).")
    share: float | None = Field(
        None, gt=0, le=1, description="Circuit = smallest set with this share of |effect|."
    )
    n_boot: int = Field(1000, ge=0, description="Bootstrap resamples for intervals.")
    batch_size: int = Field(32, ge=1, description="Patches per forward (exact patching).")
    verify: int | None = Field(
        None,
        ge=0,
        description="Attribution: re-measure its top N heads/MLPs by exact patching "
        "(default: twice the circuit size; 0: no check).",
    )
    n_splits: int = Field(
        N_SPLITS, ge=0, description="Random split-halves for each shift's noise floor (0: none)."
    )
    n_perm: int = Field(
        N_PERMUTATIONS,
        ge=0,
        description="Permutations of each shift's test of 'no shift' (0: no test).",
    )
    per_position: tuple[Annotated[str, known("per-position kind", PER_POSITION_KINDS)], ...] = (
        Field(
            (),
            description=f"Also patch these kinds ({', '.join(PER_POSITION_KINDS)}) one position "
            "at a time (exact): positions_<setting>.png.",
        )
    )

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        """Configs and runs written before the estimator had its own word call it ``method``."""
        return renamed_keys(data, CIRCUIT_RENAMED) if isinstance(data, dict) else data

    def verify_count(self, circuit_size: int, eligible: int) -> int:
        """Components to re-measure exactly (0 with exact patching: nothing to check)."""
        if self.estimator != "attribution":
            return 0
        want = 2 * max(circuit_size, 1) if self.verify is None else self.verify
        return min(want, eligible)


class CircuitSpec(CircuitSettings):
    """The settings applied to one task with one seed (of the pairs and the bootstrap): what
    :func:`run_circuits` analyses. Validated when built."""

    task: Annotated[str, known("task with patching pairs", _pair_tasks)] = Field(
        description="Task whose clean/corrupt pairs are patched."
    )
    seed: int = Field(0, ge=0, description="Seed of the pairs and the bootstrap.")


class SimilaritySettings(Settings):
    """The ICL-vs-gradient-descent analysis's settings, each declared once: ``iclft analyze
    similarity``'s options are generated from these fields and a run's ``analysis.similarity``
    section is this model (plus which tasks, and whether it runs)."""

    shots: int = Field(
        8, ge=1, description="Demonstrations: the ICL prompt's and GD's training data."
    )
    n: int = Field(8, ge=1, description="Test queries.")
    lr: float | tuple[float, ...] = Field(
        1e-3,
        description="SGD learning rate of GD and layer-causal GD, or a grid: each update then "
        "takes the grid value with the best held-out accuracy after the update.",
    )
    heldout: int = Field(
        16, ge=1, description="With an lr grid: held-out queries that choose the lr."
    )
    keys: Annotated[str, known("SimAM key set", KEY_SETS)] = Field(
        "reference",
        description="SimAM's keys: reference (the query's own tokens, the reference's c_len "
        "boundary), query+separator (also the separator tokens before the query: iclft's "
        "earlier default) or instruction+query (BOS and instruction too).",
    )
    random_draws: int = Field(5, ge=1, description="Draws of each norm-matched random update.")
    untrained: bool = Field(True, description="Also measure a randomly initialised model.")
    n_boot: int = Field(
        1000, ge=0, description="Bootstrap resamples for the 95% intervals (0: none)."
    )
    dtype: Annotated[str, known("dtype", DTYPES)] = Field(
        "float32",
        description="Evaluation dtype: float32, bfloat16, float16 or auto (bfloat16 on a CUDA "
        "GPU that has it). GD always runs in fp32; a half-precision model rounds small updates "
        "away (update_cast in the output). Under iclft run, a dtype that differs from the "
        "run's loads the model once more.",
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_grid(cls, v: Any) -> Any:
        """One positive finite rate or a non-empty list of them (numbers written as text, as
        a command line gives them, are read as numbers); a list of one is that rate."""
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        out = []
        for x in values:
            if isinstance(x, str):
                try:
                    x = float(x)
                except ValueError:
                    pass
            ok = isinstance(x, (int, float)) and not isinstance(x, bool)
            if not ok or not math.isfinite(x) or x <= 0 or abs(x) > FLOAT32_MAX:
                raise ValueError(f"must be a positive finite number or a list of them, got {v!r}")
            out.append(x)
        if not out:
            raise ValueError(f"must be a positive finite number or a list of them, got {v!r}")
        return out[0] if len(out) == 1 else tuple(out)

    @property
    def lrs(self) -> tuple[float, ...]:
        """The learning-rate grid (one value: no selection)."""
        return tuple(self.lr) if isinstance(self.lr, tuple) else (self.lr,)


class SimilaritySpec(SimilaritySettings):
    """The settings applied to one task with one seed: what
    :func:`iclft.analysis.similarity.run_similarity` measures. Validated when built."""

    task: TaskName = Field(description="Task of the queries and demonstrations.")
    seed: int = Field(0, ge=0, description="Seed of the queries, demonstrations and random update.")
