"""The experiment runner: one config in, one run directory out, resumable at any moment.

The grid is planned as a list of *stages* (per model and seed: the baseline and ICL sweep; each
fine-tuning method, then 0-shot evaluation of its model and of the checkpoints its
``eval_checkpoints`` lists; then the analysis stages). A stage is complete exactly when
``stages/<key>.json`` exists; that file is written atomically after the stage's other outputs,
so a run killed at any moment (``kill -9`` included) and started again redoes only unfinished
stages, and ``results.jsonl`` is rebuilt atomically from the stage files in plan order: the
rows are the same, in the same order, as an uninterrupted run's. The directory has one writer:
a run holds its lock (``.iclft.lock``) for its lifetime, and a second run on it is refused with
the holder's pid. Crash safety is tested by killing the run at named points
(:mod:`iclft.faults`), one in every stage kind.

Run directory::

    config.json            the resolved config (a different one is refused unless --force)
    manifest.json          versions, git revision, models and hashes, device, stage timings
    results.jsonl          one row per evaluated cell (all stages); a fine-tuned model's rows
                           carry the ``step`` it was trained for, and ``checkpoint`` (its
                           directory) where it is a checkpoint rather than the final model
    comparisons.jsonl      paired tests: ICL vs baseline and each fine-tuned model, same items
    stages/<key>.json      completion record of each stage, with its rows
    predictions/<key>.jsonl  per-item predictions of each evaluation stage
    finetune/<model>/<method>/   fine-tuned models, curves.csv, checkpoints
    analysis/<model>/circuits/<task>/   circuits.json and heat maps
    figures/, tables/, report.html, report.md   (iclft report)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iclft.config import ExperimentConfig, validate_config
from iclft.errors import TrainingDiverged, UserError
from iclft.faults import kill_point
from iclft.records import Prediction
from iclft.stages import Advance, RunContext, Stage, run_stage
from iclft.store import (
    dir_entries,
    dir_lock,
    ensure_writable_dir,
    write_json_atomic,
    write_jsonl_atomic,
    write_manifest,
)


def plan(cfg: ExperimentConfig) -> list[Stage]:
    """Every stage of the grid, in the order it runs."""
    stages: list[Stage] = []
    for mi, model in enumerate(cfg.models):
        for seed in cfg.seeds:
            tag = f"m{mi}-s{seed}"
            if "baseline" in cfg.methods or "icl" in cfg.methods:
                stages.append(Stage(f"{tag}-icl", "icl", model, seed))
            for m in cfg.ft_methods():
                stages.append(Stage(f"{tag}-{m}-train", "finetune", model, seed, m))
                stages.append(Stage(f"{tag}-{m}-eval", "ft-eval", model, seed, m))
        if cfg.analysis.circuits.enabled:
            from iclft.analysis.pairs import pair_tasks

            tasks = cfg.analysis.circuits.tasks or [t for t in cfg.tasks if t in pair_tasks()]
            for t in tasks:
                stages.append(
                    Stage(f"m{mi}-circuits-{t}", "circuits", model, cfg.seeds[0], None, t)
                )
        if cfg.analysis.similarity.enabled:
            for t in cfg.analysis.similarity.tasks or cfg.tasks:
                stages.append(
                    Stage(f"m{mi}-similarity-{t}", "similarity", model, cfg.seeds[0], None, t)
                )
    return stages


def _config_json(cfg: ExperimentConfig) -> dict:
    return json.loads(cfg.model_dump_json())


def prepare_run_dir(cfg: ExperimentConfig, run_dir: Path, force: bool) -> None:
    """Refuse a directory holding a different config (unless ``force``: then start over)."""
    saved = run_dir / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        if old != _config_json(cfg):
            if not force:
                diff = sorted(
                    k
                    for k in set(old) | set(_config_json(cfg))
                    if old.get(k) != _config_json(cfg).get(k)
                )
                raise UserError(
                    f"run directory {str(run_dir)!r} holds a different config (differs in: "
                    f"{', '.join(diff)}); use another directory or --force to start over"
                )
            for name in ("stages", "predictions", "finetune", "analysis", "figures", "tables"):
                shutil.rmtree(run_dir / name, ignore_errors=True)
            for name in ("results.jsonl", "comparisons.jsonl", "report.html", "report.md"):
                (run_dir / name).unlink(missing_ok=True)
    elif dir_entries(run_dir) and not force:
        raise UserError(
            f"run directory {str(run_dir)!r} is not empty and holds no iclft run; "
            "use an empty or new directory (or --force)"
        )
    ensure_writable_dir(run_dir)
    for tmp in run_dir.rglob(".*.tmp"):  # left by a killed atomic write; we hold the lock
        if tmp.is_file():
            tmp.unlink()
    write_json_atomic(saved, _config_json(cfg))


def rebuild_results(run_dir: Path, stages: list[Stage]) -> list[dict]:
    """``results.jsonl`` = the rows of every completed stage, in plan order (atomically)."""
    rows: list[dict] = []
    for st in stages:
        f = run_dir / "stages" / f"{st.key}.json"
        if f.exists():
            rows += json.loads(f.read_text()).get("results", [])
    write_jsonl_atomic(run_dir / "results.jsonl", rows)
    return rows


def rebuild_comparisons(run_dir: Path, stages: list[Stage], seed: int) -> list[dict]:
    """``comparisons.jsonl``: paired tests (:mod:`iclft.icl.compare`) over the predictions of
    every completed evaluation stage, in plan order (atomically)."""
    from iclft.icl.compare import paired_comparisons
    from iclft.store import read_jsonl

    preds: list[Prediction] = []
    for st in stages:
        if (run_dir / "stages" / f"{st.key}.json").exists():
            f = run_dir / "predictions" / f"{st.key}.jsonl"
            preds += [Prediction.from_json(d, f"{f}:{i}") for i, d in enumerate(read_jsonl(f), 1)]
    rows = [c.to_json() for c in paired_comparisons(preds, seed=seed)]
    write_jsonl_atomic(run_dir / "comparisons.jsonl", rows)
    return rows


@dataclass
class RunSummary:
    run_dir: Path
    stages: int
    ran: int
    skipped: int
    seconds: float


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    force: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
    cache: Path | None = None,
) -> RunSummary:
    """Walk the grid, skipping completed stages; ``stop_after`` (tests) ends after N stages;
    ``cache``: the response cache's SQLite file (:mod:`iclft.icl.cache`), opt-in.

    Holds the run directory's lock throughout (:func:`iclft.store.dir_lock`)."""
    cfg = validate_config(cfg.model_dump())  # a model_copy/model_construct skips validation
    run_dir = Path(run_dir)
    with dir_lock(run_dir):
        return _run_locked(cfg, run_dir, force, show_progress, stop_after, cache)


def _run_locked(
    cfg: ExperimentConfig,
    run_dir: Path,
    force: bool,
    show_progress: bool,
    stop_after: int | None,
    cache: Path | None = None,
) -> RunSummary:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prepare_run_dir(cfg, run_dir, force)
    stages = plan(cfg)
    ctx = RunContext(cfg, run_dir, track=lambda d, total: lambda n: None, cache_path=cache)
    started = time.time()
    timings: dict[str, float] = {}
    ran = skipped = 0
    console = Console(stderr=True)

    def manifest_fields() -> dict[str, Any]:
        import torch

        auto = "cuda" if torch.cuda.is_available() else "cpu"
        return dict(
            command="run",
            started=started,
            config=cfg.name,
            models=ctx.models.resolved or None,
            seeds=cfg.seeds,
            device=cfg.device if cfg.device != "auto" else auto,
            stages=len(stages),
            stages_ran=ran,
            stages_skipped=skipped,
            stage_seconds=timings,
        )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not show_progress,
        transient=False,
    ) as bar:
        overall = bar.add_task("run", total=len(stages))
        current: list[int] = []

        def track(description: str, total: int) -> Advance:
            for t in current:
                bar.remove_task(t)
            current.clear()
            current.append(bar.add_task(f"  {description}", total=max(total, 1)))
            return lambda n: bar.advance(current[0], n)

        ctx.track = track

        for i, stage in enumerate(stages):
            done = run_dir / "stages" / f"{stage.key}.json"
            if done.exists():
                skipped += 1
                bar.advance(overall)
                continue
            if stop_after is not None and ran >= stop_after:
                break
            bar.update(overall, description=f"run [{i + 1}/{len(stages)}] {stage.kind}")
            t0 = time.time()
            kill_point(f"stage:{stage.key}")
            try:
                out = run_stage(ctx, stage)
            except TrainingDiverged as e:
                write_manifest(
                    run_dir,
                    **manifest_fields(),
                    status="diverged",
                    failed_stage=stage.key,
                    error=str(e),
                )
                raise TrainingDiverged(f"stage {stage.key}: {e}") from None
            preds = out.pop("predictions", None)
            if preds is not None:
                write_jsonl_atomic(run_dir / "predictions" / f"{stage.key}.jsonl", preds)
            kill_point(f"stage-outputs:{stage.key}")
            timings[stage.key] = round(time.time() - t0, 3)
            write_json_atomic(done, {"stage": asdict(stage), "seconds": timings[stage.key], **out})
            rebuild_results(run_dir, stages)
            ran += 1
            bar.advance(overall)
    rows = rebuild_results(run_dir, stages)
    comparisons = rebuild_comparisons(run_dir, stages, cfg.seeds[0])
    write_manifest(
        run_dir,
        **manifest_fields(),
        status="complete",
        rows=len(rows),
        comparisons=len(comparisons),
    )
    return RunSummary(run_dir, len(stages), ran, skipped, round(time.time() - started, 1))
