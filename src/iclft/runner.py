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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iclft.config import FT_METHODS, ExperimentConfig, validate_config
from iclft.errors import TrainingDiverged, UserError
from iclft.faults import kill_point
from iclft.store import (
    dir_entries,
    dir_lock,
    ensure_writable_dir,
    write_json_atomic,
    write_jsonl_atomic,
    write_manifest,
)

Advance = Callable[[int], None]
#: ``track(description, total) -> advance``: the runner's progress display, one line per stage
Track = Callable[[str, int], Advance]


@dataclass(frozen=True)
class Stage:
    key: str
    kind: str  # icl | finetune | ft-eval | circuits | similarity
    model: str
    seed: int
    method: str | None = None
    task: str | None = None

    @property
    def label(self) -> str:
        parts = [self.kind, self.model, f"seed {self.seed}", self.method or "", self.task or ""]
        return " · ".join(p for p in parts if p)


def model_slug(spec: str) -> str:
    return spec.strip("/").replace("/", "__")


def ft_dir(run_dir: Path, model: str, method: str, seed: int, first_seed: int) -> Path:
    name = method if seed == first_seed else f"{method}@seed{seed}"
    return run_dir / "finetune" / model_slug(model) / name


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


def describe_loads(cfg: ExperimentConfig, stage: Stage, run_dir: Path | None = None) -> str:
    """What ``stage`` would load, in words (``iclft run --dry-run``)."""
    root = run_dir or Path("RUN_DIR")
    first = cfg.seeds[0]
    if stage.kind in ("icl", "similarity"):
        return stage.model
    if stage.kind == "finetune":
        out = ft_dir(root, stage.model, stage.method, stage.seed, first)
        return f"{stage.model} (trained, saved to {out})"
    if stage.kind == "ft-eval":
        return str(ft_dir(root, stage.model, stage.method, stage.seed, first))
    if stage.kind == "circuits":
        ft = cfg.ft_methods()
        if not ft:
            return stage.model
        return f"{stage.model} and {ft_dir(root, stage.model, ft[0], stage.seed, first)}"
    raise AssertionError(stage.kind)


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


class _Models:
    """Loads each model once and keeps the current one (a run walks one model at a time)."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg, self.key, self.loaded = cfg, None, None
        self.resolved: dict[str, dict] = {}

    def get(self, spec: str):
        from iclft.models.loading import load_model

        if self.key != spec:
            self.loaded = None
            self.loaded = load_model(spec, device=self.cfg.device, dtype=self.cfg.dtype)
            self.key = spec
            self.resolved[spec] = self.loaded.describe()
        return self.loaded


def _eval_spec(cfg, stage, shots, method):
    """The evaluation of one stage: the config's settings at ``shots``."""
    from iclft.icl.evaluate import EvalSpec

    return EvalSpec(
        tasks=tuple(cfg.tasks),
        variants=tuple(cfg.variants),
        shots=tuple(shots),
        n=cfg.n,
        seed=stage.seed,
        demos=cfg.demos,
        scoring=cfg.scoring,
        max_new_tokens=cfg.max_new_tokens,
        method=method,
        protocol=cfg.protocol,
        demo_sets=cfg.demo_sets,
        heldout_n=cfg.heldout_n,
        chat=cfg.chat_template,
    ).check()


def _eval_rows(cfg, stage, loaded, shots, method, advance, extra) -> tuple[list, list]:
    from iclft.icl.engine import Engine
    from iclft.icl.evaluate import evaluate_task
    from iclft.tasks import get_task

    spec = _eval_spec(cfg, stage, shots, method)
    engine = Engine(
        loaded.model, loaded.tokenizer, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens
    )
    results, preds = [], []
    for name in cfg.tasks:
        cell = evaluate_task(
            engine, get_task(name), spec, model_label=stage.model, progress=advance
        )
        engine.clear()
        for r in cell.results:
            r.update({"stage": stage.key, **extra(r)})
        results += cell.results
        preds += cell.predictions
        kill_point(f"eval:{stage.key}/{name}")
    return results, preds


def _run_stage(cfg, stage, run_dir, models, track) -> dict[str, Any]:
    from iclft.icl.evaluate import prompt_count

    first_seed = cfg.seeds[0]
    per_item = len(cfg.tasks) * len(cfg.variants) * cfg.n
    if stage.kind == "icl":
        shots = sorted({0} if "baseline" in cfg.methods else set())
        if "icl" in cfg.methods:
            shots = sorted(set(shots) | set(cfg.shots))
        advance = track(
            stage.label, len(cfg.tasks) * prompt_count(_eval_spec(cfg, stage, shots, None))
        )
        loaded = models.get(stage.model)
        results, preds = _eval_rows(
            cfg, stage, loaded, shots, None, advance, lambda r: {"train_examples": r["shots"]}
        )
        return {"results": results, "predictions": preds}
    if stage.kind == "finetune":
        from transformers import TrainerCallback

        from iclft.finetune import make_config, run_finetune
        from iclft.finetune.config import TRAIN_CONFIG_NAME

        s = cfg.finetune_for(stage.method)
        ft = make_config(
            model=stage.model,
            method=FT_METHODS[stage.method],
            tasks=list(cfg.tasks),
            seed=stage.seed,
            device=cfg.device,
            **s.model_dump(),
        )
        out = ft_dir(run_dir, stage.model, stage.method, stage.seed, first_seed)
        advance = track(stage.label, s.steps)

        class _Steps(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                advance(1)

        models.loaded, models.key = None, None  # free the evaluation model while training
        res = run_finetune(
            ft,
            out,
            resume=(out / TRAIN_CONFIG_NAME).exists(),
            show_progress=False,
            extra_callbacks=[_Steps()],
        )
        return {
            "finetune": {
                "dir": str(out.relative_to(run_dir)),
                "steps": res.steps,
                "final_loss": res.final_loss,
                "trainable": res.trainable,
                "examples_seen": res.steps * res.examples_per_step,
            }
        }
    if stage.kind == "ft-eval":
        from iclft.finetune.train import saved_models

        s = cfg.finetune_for(stage.method)
        out = ft_dir(run_dir, stage.model, stage.method, stage.seed, first_seed)
        saved = saved_models(out, s.eval_checkpoints)  # listed checkpoints, then the final
        advance = track(stage.label, per_item * len(saved))
        results, preds = [], []
        for m in saved:
            extra = {
                "model": stage.model,
                "step": m.step,
                "train_examples": m.examples_seen,
                "ft_dir": str(out.relative_to(run_dir)),
                "checkpoint": None if m.final else str(m.path.relative_to(run_dir)),
            }
            rows, items = _eval_rows(
                cfg, stage, models.get(str(m.path)), [0], stage.method, advance,
                lambda r, extra=extra: extra,
            )  # fmt: skip
            results += rows
            preds += [
                {**p, "model": stage.model, "step": m.step, "checkpoint": extra["checkpoint"]}
                for p in items
            ]
        return {"results": results, "predictions": preds}
    if stage.kind == "circuits":
        from iclft.analysis.pipeline import CircuitSpec, run_circuits

        c = cfg.analysis.circuits
        spec = CircuitSpec(
            task=stage.task,
            shots=c.shots,
            n=c.n,
            method=c.method,
            seed=stage.seed,
            top_k=c.top_k,
            verify=c.verify,
            n_splits=c.n_splits,
            per_position=tuple(c.per_position),
        )
        ft = [m for m in cfg.ft_methods()]
        ft_model = ft_dir(run_dir, stage.model, ft[0], stage.seed, first_seed) if ft else None
        out = run_dir / "analysis" / model_slug(stage.model) / "circuits" / stage.task
        models.loaded, models.key = None, None
        summary = run_circuits(
            spec,
            out,
            model=stage.model,
            ft_model=ft_model,
            device=cfg.device,
            dtype=cfg.dtype,
            track=lambda d, n: track(f"{stage.label} · {d}", n),
        )
        return {
            "analysis": {
                "dir": str(out.relative_to(run_dir)),
                "summary": summary.get("summary") if isinstance(summary, dict) else None,
            }
        }
    if stage.kind == "similarity":
        from iclft.analysis.similarity import SimilaritySpec, run_similarity

        c = cfg.analysis.similarity
        spec = SimilaritySpec(
            task=stage.task, shots=c.shots, n=c.n, seed=stage.seed, keys=c.keys,
            lr=tuple(c.lr) if isinstance(c.lr, list) else c.lr, heldout=c.heldout,
            random_draws=c.random_draws, untrained=c.untrained, n_boot=c.n_boot,
        )  # fmt: skip
        out = run_dir / "analysis" / model_slug(stage.model) / "similarity" / stage.task
        models.loaded, models.key = None, None
        result = run_similarity(
            spec, out, model=stage.model, device=cfg.device, dtype=cfg.dtype,
            track=lambda d, n: track(f"{stage.label} · {d}", n),
        )  # fmt: skip
        summary = result.get("summary") if isinstance(result, dict) else None
        return {"analysis": {"dir": str(out.relative_to(run_dir)), "summary": summary}}
    raise AssertionError(stage.kind)


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

    preds: list[dict] = []
    for st in stages:
        if (run_dir / "stages" / f"{st.key}.json").exists():
            preds += read_jsonl(run_dir / "predictions" / f"{st.key}.jsonl")
    rows = [c.to_dict() for c in paired_comparisons(preds, seed=seed)]
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
) -> RunSummary:
    """Walk the grid, skipping completed stages; ``stop_after`` (tests) ends after N stages.

    Holds the run directory's lock throughout (:func:`iclft.store.dir_lock`)."""
    cfg = validate_config(cfg.model_dump())  # a model_copy/model_construct skips validation
    run_dir = Path(run_dir)
    with dir_lock(run_dir):
        return _run_locked(cfg, run_dir, force, show_progress, stop_after)


def _run_locked(
    cfg: ExperimentConfig,
    run_dir: Path,
    force: bool,
    show_progress: bool,
    stop_after: int | None,
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
    started = time.time()
    models = _Models(cfg)
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
            models=models.resolved or None,
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
                out = _run_stage(cfg, stage, run_dir, models, track)
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
