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

Under ``accelerate launch`` with N processes every process walks the same plan: evaluation
stages split each engine call's batches (the same predictions as one process), fine-tuning
stages are one DDP job with the config's batch size as the global batch, and consecutive
analysis stages are dealt out whole, one per process at a time. Rank 0 holds the lock and writes
every shared file (an analysis stage's own files are written by the process that ran it); the
run directory must be on a filesystem all processes see. The manifest records ``processes`` and
each evaluation stage's ``prompts_per_process``.

Run directory::

    config.json            the resolved config (a different one is refused unless --force,
                           which moves the old run aside to RUN_DIR.replaced-N)
    manifest.json          versions, git revision, models and hashes, device, stage timings
    results.jsonl          one row per evaluated cell (all stages); a fine-tuned model's rows
                           carry the ``step`` it was trained for, and ``checkpoint`` (its
                           directory) where it is a checkpoint rather than the final model
    comparisons.jsonl      paired tests on the same items: ICL vs baseline and each fine-tuned
                           model, both vs the constant answer; Holm-adjusted over all of them
    stages/<key>.json      completion record of each stage, with its rows
    predictions/<key>.jsonl  per-item predictions of each evaluation stage
    finetune/<model>/<method>/   fine-tuned models, curves.csv, checkpoints
    analysis/<model>/circuits/<task>/   circuits.json and heat maps
    figures/, tables/, report.html, report.md   (iclft report)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iclft.errors import TrainingDiverged, UserError
from iclft.faults import kill_point
from iclft.logs import Task, progress
from iclft.records import Prediction, StageRecord
from iclft.run.config import ExperimentConfig, validate_config
from iclft.run.plan import Stage, plan
from iclft.run.stages import Advance, RunContext, is_collective, run_stage
from iclft.store import (
    claim_output_dir,
    dir_lock,
    move_aside,
    write_json_atomic,
    write_jsonl_atomic,
    write_manifest,
)
from iclft.tasks.splits import ITEM_LAYOUT, ITEM_LAYOUT_KEY


def _config_json(cfg: ExperimentConfig) -> dict:
    return json.loads(cfg.model_dump_json())


def _saved_config(path: Path) -> dict:
    """A run's saved config.json as this version resolves it: settings added since it was
    written take their defaults (so a run of an older iclft resumes when nothing it ran with
    changed); a file this version no longer validates is compared as written."""
    raw = json.loads(path.read_text())
    try:
        return _config_json(validate_config(raw, str(path)))
    except UserError:
        return raw


def _stale_stages(run_dir: Path) -> list[str]:
    """Completed stages drawn under another item layout (:data:`ITEM_LAYOUT`; records without
    one are layout 1): finishing the run beside them would mix two layouts."""
    stale = []
    for f in sorted((run_dir / "stages").glob("*.json")):
        try:
            layout = json.loads(f.read_text()).get(ITEM_LAYOUT_KEY) or 1
        except (OSError, ValueError):
            continue
        if layout != ITEM_LAYOUT:
            stale.append(f.stem)
    return stale


def prepare_run_dir(cfg: ExperimentConfig, run_dir: Path, force: bool) -> None:
    """A new or empty directory, or a run of the same config (resumed). A run of a different
    config, or a non-empty directory another command wrote, is refused unless ``force``: then
    its contents are moved aside to ``RUN_DIR.replaced-N`` and the run starts over.
    Stages of another item layout are never mixed with this one's."""
    claim = claim_output_dir(run_dir, "run", force=force)
    saved = run_dir / "config.json"
    if claim.state == "own" and saved.exists():
        old = _saved_config(saved)
        stale = _stale_stages(run_dir)
        if stale and not force:
            raise UserError(
                f"run directory {str(run_dir)!r} holds {len(stale)} stages (e.g. {stale[0]}) "
                "drawn under an older item layout of iclft (fine-tuning curves on test items, "
                "training texts and demonstrations not kept apart from the scored questions); this "
                f"version draws layout {ITEM_LAYOUT} and does not mix them: use another "
                "directory or --force to start over"
            )
        if old != _config_json(cfg) or stale:
            if not force:
                diff = sorted(
                    k
                    for k in set(old) | set(_config_json(cfg))
                    if old.get(k) != _config_json(cfg).get(k)
                )
                raise UserError(
                    f"run directory {str(run_dir)!r} holds a different config (differs in: "
                    f"{', '.join(diff)}); use another directory, or --force to move it aside "
                    f"to {run_dir.name}.replaced-N and start over"
                )
            move_aside(run_dir)
            claim_output_dir(run_dir, "run")
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
            record = StageRecord.from_json(json.loads(f.read_text()), str(f))
            rows += [r.to_json() for r in record.results or []]
    write_jsonl_atomic(run_dir / "results.jsonl", rows)
    return rows


def rebuild_comparisons(run_dir: Path, stages: list[Stage]) -> list[dict]:
    """``comparisons.jsonl``: paired tests (:mod:`iclft.icl.compare`) over the predictions of
    every completed evaluation stage, in plan order, Holm-adjusted as one family (atomically)."""
    from iclft.icl.compare import paired_comparisons
    from iclft.store import read_jsonl

    preds: list[Prediction] = []
    for st in stages:
        if (run_dir / "stages" / f"{st.key}.json").exists():
            f = run_dir / "predictions" / f"{st.key}.jsonl"
            preds += [Prediction.from_json(d, f"{f}:{i}") for i, d in enumerate(read_jsonl(f), 1)]
    rows = [c.to_json() for c in paired_comparisons(preds)]
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
    from contextlib import ExitStack

    from iclft import distributed

    cfg = validate_config(cfg.model_dump())  # a model_copy/model_construct skips validation
    run_dir = Path(run_dir)
    shard = distributed.current()
    if shard is None:
        with dir_lock(run_dir):
            prepare_run_dir(cfg, run_dir, force)
            return _run_locked(cfg, run_dir, show_progress, stop_after, cache)
    check_processes(cfg, shard.world)
    with ExitStack() as held:

        def take() -> None:  # rank 0: the lock for the whole run, then the directory
            held.enter_context(dir_lock(run_dir))
            prepare_run_dir(cfg, run_dir, force)

        shard.on_main(take)  # a refusal there is raised on every process
        return _run_locked(cfg, run_dir, show_progress, stop_after, cache, shard)


def check_processes(cfg: ExperimentConfig, processes: int) -> None:
    """Refuse a fine-tuning batch that N processes cannot share equally (the global batch is
    the config's, so results do not depend on N)."""
    from iclft.finetune.config import per_process_batch

    for m in cfg.ft_methods():
        try:
            per_process_batch(cfg.finetune_for(m).batch_size, processes)
        except UserError as e:
            raise UserError(f"{m}: {e}") from None


def _run_locked(
    cfg: ExperimentConfig,
    run_dir: Path,
    show_progress: bool,
    stop_after: int | None,
    cache: Path | None = None,
    shard=None,
) -> RunSummary:
    stages = plan(cfg)
    ctx = RunContext(
        cfg, run_dir, track=lambda d, total: lambda n: None, cache_path=cache, shard=shard
    )
    main = shard is None or shard.rank == 0
    started = time.time()
    timings: dict[str, float] = {}
    ran_by: dict[str, int] = {}  # analysis stage -> the process that ran it (several processes)
    ran = skipped = 0

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
            processes=ctx.processes,
            prompts_per_process=ctx.prompts_per_process,
            stage_process=ran_by or None,
        )

    with progress(show_progress and main) as shown:
        overall = shown.task("run", len(stages))
        current: list[Task] = []

        def track(description: str, total: int) -> Advance:
            for t in current:
                t.remove()
            current[:] = [shown.task(f"  {description}", max(total, 1))]
            return current[0].advance

        ctx.track = track

        def finish(stage: Stage, out: dict[str, Any], seconds: float) -> None:
            """Write a stage's outputs, then its completion record (atomically, in order)."""
            preds = out.pop("predictions", None)
            if preds is not None:
                write_jsonl_atomic(run_dir / "predictions" / f"{stage.key}.jsonl", preds)
            kill_point(f"stage-outputs:{stage.key}")
            done = run_dir / "stages" / f"{stage.key}.json"
            record = StageRecord(
                stage=asdict(stage), seconds=seconds, item_layout=ITEM_LAYOUT, **out
            )
            write_json_atomic(done, record)

        def attempt(stage: Stage) -> tuple[dict[str, Any], float]:
            t0 = time.time()
            kill_point(f"stage:{stage.key}")
            try:
                out = run_stage(ctx, stage)
            except TrainingDiverged as e:
                if main:
                    write_manifest(
                        run_dir,
                        **manifest_fields(),
                        status="diverged",
                        failed_stage=stage.key,
                        error=str(e),
                    )
                raise TrainingDiverged(f"stage {stage.key}: {e}") from None
            return out, round(time.time() - t0, 3)

        pending = [st for st in stages if not (run_dir / "stages" / f"{st.key}.json").exists()]
        if shard is not None:  # rank 0's view of what is done, so every process agrees
            pending = shard.broadcast(pending)
        skipped = len(stages) - len(pending)
        overall.advance(skipped)
        if stop_after is not None:
            pending = pending[:stop_after]
        i = 0
        while i < len(pending):
            stage = pending[i]
            n_done = len(stages) - len(pending) + i
            overall.update(description=f"run [{n_done + 1}/{len(stages)}] {stage.kind}")
            if shard is None or is_collective(stage):
                out, seconds = attempt(stage)
                timings[stage.key] = seconds
                if main:
                    finish(stage, out, seconds)
                    rebuild_results(run_dir, stages)
                group = [stage]
            else:  # consecutive whole stages, dealt out one per process
                group = [stage]
                while i + len(group) < len(pending) and not is_collective(pending[i + len(group)]):
                    group.append(pending[i + len(group)])
                group = group[: shard.world]
                owners = shard.round_robin(len(group))
                mine = [st for st, r in zip(group, owners) if r == shard.rank]
                for st in mine:
                    out, seconds = attempt(st)
                    finish(st, out, seconds)
                    timings[st.key] = seconds
                    ran_by[st.key] = shard.rank
                for t, r in shard.gather((timings, ran_by)):
                    timings.update(t)
                    ran_by.update(r)
            if shard is not None:
                shard.barrier()  # every process sees the stage's files before going on
            ran += len(group)
            i += len(group)
            overall.advance(len(group))
            if main and shard is not None and not is_collective(stage):
                rebuild_results(run_dir, stages)
    if not main:
        return RunSummary(run_dir, len(stages), ran, skipped, round(time.time() - started, 1))
    rows = rebuild_results(run_dir, stages)
    comparisons = rebuild_comparisons(run_dir, stages)
    write_manifest(
        run_dir,
        **manifest_fields(),
        status="complete",
        rows=len(rows),
        comparisons=len(comparisons),
    )
    return RunSummary(run_dir, len(stages), ran, skipped, round(time.time() - started, 1))
