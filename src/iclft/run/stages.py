"""The runner's stages: one registered function per stage kind, and the run context they share.

A stage function takes the :class:`RunContext` and its :class:`Stage` and returns the stage's
record body (the runner adds ``stage`` and ``seconds`` and writes the
:class:`~iclft.records.StageRecord`, ``stages/<key>.json``); ``predictions``, when present, are
popped and written to ``predictions/<key>.jsonl``. Models
come from the context's :class:`ModelPool`, which loads each model once and keeps it until a
stage releases it (fine-tuning releases everything, to give training the memory) or the pool is
full (it keeps at most ``capacity`` models, least recently used out first).

Add a stage kind by writing ``@stage("kind", loads=...) def _kind(ctx, st): ...`` here and
planning it in :func:`iclft.run.plan.plan`.

Under ``accelerate launch`` (``ctx.shard`` set) a stage kind is either *collective*, run by every
process together (evaluation stages split each engine call's batches, fine-tuning is one DDP
job), or not, run whole by one process (an analysis stage: one task's circuits or similarity).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclft.faults import kill_point
from iclft.layout import ft_dir, model_slug
from iclft.records import ft_method
from iclft.run.config import ExperimentConfig
from iclft.run.plan import Stage

Advance = Callable[[int], None]
#: ``track(description, total) -> advance``: the runner's progress display, one line per stage
Track = Callable[[str, int], Advance]


class ModelPool:
    """Loads each model once (``get``) and keeps it until ``release``d or pushed out by a newer
    one when ``capacity`` models are held; ``resolved`` records every model loaded."""

    def __init__(self, device: str, dtype: str, capacity: int = 2):
        self.device, self.dtype, self.capacity = device, dtype, max(1, capacity)
        self._held: OrderedDict[str, Any] = OrderedDict()
        self.resolved: dict[str, dict] = {}

    def get(self, spec: str, dtype: str | None = None):
        """Model ``spec`` at the run's dtype, or at ``dtype`` (held apart when the two resolve
        to different dtypes on this device, as ``spec [dtype]``)."""
        from iclft.models.loading import load_model, resolve_device, resolve_dtype

        key = spec
        if dtype is not None:
            dev = resolve_device(self.device)
            if resolve_dtype(dtype, dev) != resolve_dtype(self.dtype, dev):
                key = f"{spec} [{dtype}]"
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key]
        while len(self._held) >= self.capacity:
            self._held.popitem(last=False)
        loaded = load_model(spec, device=self.device, dtype=self.dtype if key == spec else dtype)
        self._held[key] = loaded
        self.resolved[key] = loaded.describe()
        return loaded

    def release(self, spec: str | None = None) -> None:
        """Drop ``spec``, at every dtype it is held at (every model when ``None``), so its
        memory can be reclaimed."""
        if spec is None:
            self._held.clear()
        for key in [k for k in self._held if k == spec or k.startswith(f"{spec} [")]:
            del self._held[key]


@dataclass
class RunContext:
    """What every stage of one run shares: the config, the run directory, the model pool and
    the progress display."""

    cfg: ExperimentConfig
    run_dir: Path
    track: Track
    cache_path: Path | None = None  # the response cache (``--cache``), opt-in
    shard: Any = None  # an iclft.distributed.Shard under accelerate launch, else None
    models: ModelPool = field(init=False)
    #: stage key -> prompts each process scored (evaluation stages)
    prompts_per_process: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        device = self.cfg.device
        if self.shard is not None and device == "auto":
            device = self.shard.device  # each process its own GPU
        self.models = ModelPool(device, self.cfg.dtype)

    @property
    def processes(self) -> int:
        return 1 if self.shard is None else self.shard.world

    @property
    def first_seed(self) -> int:
        return self.cfg.seeds[0]

    def ft_dir(self, st: Stage, method: str | None = None) -> Path:
        return ft_dir(self.run_dir, st.model, method or st.method, st.seed, self.first_seed)

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run_dir))

    def response_cache(self, loaded):
        """The response cache of ``loaded`` when the run uses one, else ``None``."""
        if self.cache_path is None:
            return None
        from iclft.icl.cache import ResponseCache

        if self.shard is not None:  # rank 0 creates the file before the others open it
            self.shard.on_main(lambda: ResponseCache.for_model(self.cache_path, loaded).close())
        return ResponseCache.for_model(self.cache_path, loaded)


StageFn = Callable[[RunContext, Stage], dict[str, Any]]
#: ``loads(cfg, stage, run_dir) -> [model]``: what a stage loads, before anything runs
LoadsFn = Callable[[ExperimentConfig, Stage, Path], list[str]]


@dataclass(frozen=True)
class StageKind:
    run: StageFn
    loads: LoadsFn
    collective: bool  # every process runs it together (else one process runs it whole)


STAGES: dict[str, StageKind] = {}


def stage(kind: str, loads: LoadsFn, collective: bool = True) -> Callable[[StageFn], StageFn]:
    """Register the function that runs stages of ``kind``, what such a stage loads, and whether
    all processes run it together (see the module docstring)."""

    def register(fn: StageFn) -> StageFn:
        STAGES[kind] = StageKind(fn, loads, collective)
        return fn

    return register


def is_collective(st: Stage) -> bool:
    return STAGES[st.kind].collective


def run_stage(ctx: RunContext, st: Stage) -> dict[str, Any]:
    return STAGES[st.kind].run(ctx, st)


def stage_loads(cfg: ExperimentConfig, st: Stage, run_dir: Path) -> list[str]:
    """The models ``st`` loads (``iclft run --dry-run`` prints them)."""
    return STAGES[st.kind].loads(cfg, st, run_dir)


def _base_model(cfg: ExperimentConfig, st: Stage, run_dir: Path) -> list[str]:
    return [st.model]


def _trained_model(cfg: ExperimentConfig, st: Stage, run_dir: Path) -> list[str]:
    return [str(ft_dir(run_dir, st.model, st.method, st.seed, cfg.seeds[0]))]


def _base_and_first_ft(cfg: ExperimentConfig, st: Stage, run_dir: Path) -> list[str]:
    ft = cfg.ft_methods()
    extra = [str(ft_dir(run_dir, st.model, ft[0], st.seed, cfg.seeds[0]))] if ft else []
    return [st.model, *extra]


# ----- evaluation -----------------------------------------------------------------------------


def eval_spec(cfg: ExperimentConfig, st: Stage, shots, method):
    """The evaluation of one stage: the config's settings at ``shots``."""
    from iclft.icl.settings import EvalSettings, EvalSpec

    return EvalSpec(
        tasks=tuple(cfg.tasks),
        variants=tuple(cfg.variants),
        shots=tuple(shots),
        seed=st.seed,
        method=method,
        **cfg.model_dump(include=set(EvalSettings.model_fields)),
    )


def _eval_rows(ctx: RunContext, st: Stage, loaded, shots, method, advance, extra):
    from iclft.icl.engine import Engine
    from iclft.icl.evaluate import evaluate_task
    from iclft.tasks import get_task

    cfg = ctx.cfg
    spec = eval_spec(cfg, st, shots, method)
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        cache=ctx.response_cache(loaded),
        shard=ctx.shard,
    )
    results, preds = [], []
    for name in cfg.tasks:
        cell = evaluate_task(engine, get_task(name), spec, model_label=st.model, progress=advance)
        engine.clear()
        results += [r.replace(stage=st.key, **extra(r)) for r in cell.results]
        preds += cell.predictions
        kill_point(f"eval:{st.key}/{name}")
    had = ctx.prompts_per_process.get(st.key, [0] * ctx.processes)
    ctx.prompts_per_process[st.key] = [a + b for a, b in zip(had, engine.prompts_per_process)]
    return results, preds


@stage("icl", loads=_base_model)
def _icl(ctx: RunContext, st: Stage) -> dict[str, Any]:
    """The baseline (0-shot) and the ICL sweep of the base model."""
    from iclft.icl.evaluate import prompt_count

    cfg = ctx.cfg
    shots = sorted({0} if "baseline" in cfg.methods else set())
    if "icl" in cfg.methods:
        shots = sorted(set(shots) | set(cfg.shots))
    total = len(cfg.tasks) * prompt_count(eval_spec(cfg, st, shots, None))
    advance = ctx.track(st.label, total)
    results, preds = _eval_rows(
        ctx, st, ctx.models.get(st.model), shots, None, advance,
        lambda r: {"train_examples": r.shots},
    )  # fmt: skip
    return {"results": results, "predictions": preds}


# ----- fine-tuning ----------------------------------------------------------------------------


@stage("finetune", loads=_base_model)
def _finetune(ctx: RunContext, st: Stage) -> dict[str, Any]:
    """Train one fine-tuning method (resuming its own checkpoints)."""
    from transformers import TrainerCallback

    from iclft.finetune import make_config, run_finetune
    from iclft.finetune.config import EVAL_SETTINGS, METHOD_SPECIFIC, reads_setting
    from iclft.layout import TRAIN_CONFIG_NAME

    cfg = ctx.cfg
    s = cfg.finetune_for(st.method)
    settings = s.model_dump()
    for name in METHOD_SPECIFIC:  # the shared block's settings this method does not read
        if not reads_setting(ft_method(st.method), s.params, name):
            settings.pop(name)
    ft = make_config(
        model=st.model,
        method=ft_method(st.method),
        tasks=list(cfg.tasks),
        seed=st.seed,
        device=cfg.device,  # under DDP the Trainer puts each process on its own device
        # the items the run's evaluations score (kept out of the training texts) and how its
        # cells are scored (the curve is scored alike)
        test_n=cfg.n,
        **{name: getattr(cfg, name) for name in EVAL_SETTINGS},
        **settings,
    )
    out = ctx.ft_dir(st)
    advance = ctx.track(st.label, s.steps)

    class _Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            advance(1)

    ctx.models.release()  # give training the memory of every evaluation model
    res = run_finetune(
        ft,
        out,
        resume=(out / TRAIN_CONFIG_NAME).exists(),
        show_progress=False,
        extra_callbacks=[_Steps()],
    )
    return {
        "finetune": {
            "dir": ctx.rel(out),
            "steps": res.steps,
            "final_loss": res.final_loss,
            "trainable": res.trainable,
            "examples_seen": res.steps * res.examples_per_step,
        }
    }


@stage("ft-eval", loads=_trained_model)
def _ft_eval(ctx: RunContext, st: Stage) -> dict[str, Any]:
    """0-shot evaluation of a fine-tuned model and of the checkpoints its settings list."""
    from iclft.finetune.train import saved_models

    cfg = ctx.cfg
    s = cfg.finetune_for(st.method)
    out = Path(_trained_model(cfg, st, ctx.run_dir)[0])
    saved = saved_models(out, s.eval_checkpoints)  # listed checkpoints, then the final
    per_model = len(cfg.tasks) * len(cfg.variants) * cfg.n
    advance = ctx.track(st.label, per_model * len(saved))
    results, preds = [], []
    for m in saved:
        extra = {
            "model": st.model,
            "step": m.step,
            "train_examples": m.examples_seen,
            "ft_dir": ctx.rel(out),
            "checkpoint": None if m.final else ctx.rel(m.path),
        }
        rows, items = _eval_rows(
            ctx, st, ctx.models.get(str(m.path)), [0], st.method, advance,
            lambda r, extra=extra: extra,
        )  # fmt: skip
        if not m.final:  # a checkpoint is evaluated once; the final model may be analysed
            ctx.models.release(str(m.path))
        results += rows
        preds += [
            p.replace(model=st.model, step=m.step, checkpoint=extra["checkpoint"]) for p in items
        ]
    return {"results": results, "predictions": preds}


# ----- analysis -------------------------------------------------------------------------------


def _analysis_dir(ctx: RunContext, st: Stage, what: str) -> Path:
    return ctx.run_dir / "analysis" / model_slug(st.model) / what / st.task


@stage("circuits", loads=_base_and_first_ft, collective=False)
def _circuits(ctx: RunContext, st: Stage) -> dict[str, Any]:
    """Circuits of the base model, with ICL and (when the run fine-tunes) the first fine-tuned
    model, on one task."""
    from iclft.analysis.pipeline import run_circuits
    from iclft.analysis.settings import CircuitSettings, CircuitSpec

    c = ctx.cfg.analysis.circuits
    spec = CircuitSpec(
        task=st.task, seed=st.seed, **c.model_dump(include=set(CircuitSettings.model_fields))
    )
    base, *ft = _base_and_first_ft(ctx.cfg, st, ctx.run_dir)
    ft_model = Path(ft[0]) if ft else None
    loaded = {"base": ctx.models.get(base)}
    if ft_model is not None:
        loaded["ft"] = ctx.models.get(str(ft_model))
    out = _analysis_dir(ctx, st, "circuits")
    run_circuits(
        spec,
        out,
        model=st.model,
        ft_model=ft_model,
        loaded=loaded,
        track=lambda d, n: ctx.track(f"{st.label} · {d}", n),
    )
    return {"analysis": {"dir": ctx.rel(out)}}


@stage("similarity", loads=_base_model, collective=False)
def _similarity(ctx: RunContext, st: Stage) -> dict[str, Any]:
    """ICL against gradient descent on the demonstrations, on one task."""
    from iclft.analysis.settings import SimilaritySettings, SimilaritySpec
    from iclft.analysis.similarity import run_similarity

    c = ctx.cfg.analysis.similarity
    spec = SimilaritySpec(
        task=st.task, seed=st.seed, **c.model_dump(include=set(SimilaritySettings.model_fields))
    )
    out = _analysis_dir(ctx, st, "similarity")
    result = run_similarity(
        spec,
        out,
        model=st.model,
        loaded=ctx.models.get(st.model, dtype=spec.dtype),
        track=lambda d, n: ctx.track(f"{st.label} · {d}", n),
    )
    return {"analysis": {"dir": ctx.rel(out), "summary": result.summary}}
