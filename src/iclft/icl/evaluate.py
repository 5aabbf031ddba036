"""In-context-learning evaluation: a grid of (task, variant, shots) cells scored by the engine.

Scoring functions are interchangeable (inspect_ai style): ``generate`` decodes greedily and
parses the continuation with the task's parser; ``loglik`` picks the choice with the highest
total log-probability (lm-evaluation-harness' convention). ``auto`` is loglik for choice tasks
and generate otherwise.

Two protocols (:data:`PROTOCOLS`): ``exact`` (ours) skips leading whitespace and newlines,
stops at the next newline, parses the first non-empty line and requires an exact match;
``paper`` is the seed paper's code as it was: a fixed ``max_new_tokens`` continuation with no
stop, scored correct when ``str(target)`` occurs anywhere in it (so "2" is found in "12").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclft.errors import UnknownNameError, UserError
from iclft.icl.engine import Engine, context_limit
from iclft.icl.metrics import wilson_interval
from iclft.icl.prompts import DEMO_MODES, DemoPool, Prompt, build_prompt
from iclft.tasks import VARIANTS, Example, Task, check_variant, get_task

SCORINGS = ("generate", "loglik", "auto")
#: protocol -> (how generation stops, see ``Engine.generate``; how an item is judged)
PROTOCOLS = {"exact": ("newline", "exact match"), "paper": ("none", "substring")}


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate. Validated by :meth:`check` before any model is loaded."""

    tasks: tuple[str, ...]
    variants: tuple[str, ...] = VARIANTS
    shots: tuple[int, ...] = (0,)
    n: int = 50
    seed: int = 0
    demos: str = "shared"
    scoring: str = "generate"
    max_new_tokens: int = 10
    method: str | None = None  # label for results rows; default: baseline (0-shot) / icl
    protocol: str = "exact"

    def check(self) -> EvalSpec:
        if not self.tasks:
            raise UserError("no task given")
        for t in self.tasks:
            get_task(t)
        for v in self.variants:
            check_variant(v)
        if not self.shots:
            raise UserError("no shot count given")
        bad = [k for k in self.shots if not isinstance(k, int) or k < 0]
        if bad:
            raise UserError(f"shots must be non-negative integers, got {bad}")
        if not isinstance(self.n, int) or self.n < 1:
            raise UserError(f"n (test items per cell) must be a positive integer, got {self.n!r}")
        if self.demos not in DEMO_MODES:
            raise UnknownNameError("demonstration mode", self.demos, DEMO_MODES)
        if self.scoring not in SCORINGS:
            raise UnknownNameError("scoring", self.scoring, SCORINGS)
        if self.scoring == "loglik":
            free = [t for t in self.tasks if not get_task(t).is_choice]
            if free:
                raise UserError(
                    f"loglik scoring needs a choice task; {', '.join(free)} "
                    "has free answers (use --scoring generate or auto)"
                )
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.protocol not in PROTOCOLS:
            raise UnknownNameError("protocol", self.protocol, PROTOCOLS)
        if self.protocol == "paper" and self.scoring == "loglik":
            raise UserError(
                "the paper protocol generates text for every task; use --scoring generate or "
                "auto with --protocol paper"
            )
        return self


def method_label(spec: EvalSpec, shots: int) -> str:
    """The row label of an evaluated setting: the spec's method, else baseline / icl."""
    return spec.method or ("baseline" if shots == 0 else "icl")


def scoring_for(task: Task, scoring: str, protocol: str = "exact") -> str:
    if protocol == "paper":  # the seed code generated for every task, choice tasks too
        return "generate"
    if scoring == "auto":
        return "loglik" if task.is_choice else "generate"
    return scoring


@dataclass
class CellResult:
    results: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)


def _fit_prompts(
    engine: Engine, task: Task, pool: DemoPool, query: Example, index: int, k: int, reserve: int
) -> Prompt:
    """The k-shot prompt, dropping demonstrations from the end until it fits the context."""
    limit = context_limit(engine.model)
    demos = pool.demos(query, index, k)
    prompt = build_prompt(task, query, demos, k)
    if limit is None:
        return prompt
    while len(engine.encode(prompt.text)) + reserve > limit:
        if not demos:
            raise UserError(
                f"a {task.name} query alone needs {len(engine.encode(prompt.text))} tokens, "
                f"more than the model's context of {limit}"
            )
        demos = demos[:-1]
        prompt = build_prompt(task, query, demos, k)
    return prompt


def _check_shots_fit(
    engine: Engine, task: Task, pool: DemoPool, query: Example, k: int, reserve: int
):
    """Refuse shot counts that cannot fit at all (rather than silently truncating them all)."""
    limit = context_limit(engine.model)
    if limit is None or k == 0:
        return
    demos = pool.candidates(query, 0)[:1]
    one = len(engine.encode(task.render_demo(demos[0]) + "\n\n")) if demos else 1
    base = len(engine.encode(build_prompt(task, query, [], 0).text)) + reserve
    fits = max(0, (limit - base) // max(one, 1))
    if k > 2 * fits + 1:  # truncation handles the margin; this is clearly too many
        raise UserError(
            f"--shots {k} cannot fit the model's context of {limit} tokens: a {task.name} "
            f"demonstration takes about {one} tokens, so at most about {fits} shots fit"
        )


def check_fit(engine: Engine, task: Task, spec: EvalSpec) -> None:
    """Refuse shot counts that cannot fit the model's context (before any work starts)."""
    scoring = scoring_for(task, spec.scoring, spec.protocol)
    reserve = spec.max_new_tokens if scoring == "generate" else 8
    pool = DemoPool(task, spec.seed, spec.demos, max(spec.shots))
    first = task.generate(spec.variants[0], 1, spec.seed)[0]
    for k in spec.shots:
        _check_shots_fit(engine, task, pool, first, k, reserve)


def evaluate_task(
    engine: Engine,
    task: Task,
    spec: EvalSpec,
    *,
    model_label: str,
    progress: Callable[[int], None] | None = None,
) -> CellResult:
    """All (variant, shots) cells of one task: one engine call, so caches are shared."""
    scoring = scoring_for(task, spec.scoring, spec.protocol)
    stop, judge = PROTOCOLS[spec.protocol]
    pool = DemoPool(task, spec.seed, spec.demos, max(spec.shots))
    queries = {v: task.generate(v, spec.n, spec.seed) for v in spec.variants}
    reserve = spec.max_new_tokens if scoring == "generate" else 8
    check_fit(engine, task, spec)
    prompts: list[Prompt] = [
        _fit_prompts(engine, task, pool, q, i, k, reserve)
        for k in spec.shots
        for v in spec.variants
        for i, q in enumerate(queries[v])
    ]
    texts = [p.text for p in prompts]
    prefixes = [p.prefix for p in prompts]
    scores: list[list[float]] | None = None
    if scoring == "generate":
        outputs = engine.generate(
            texts, prefixes, max_new_tokens=spec.max_new_tokens, stop=stop, progress=progress
        )
        preds = [task.parse(o) for o in outputs]
    else:
        choices = list(task.choices or ())
        scores = engine.loglik(
            texts, [[" " + c for c in choices]] * len(texts), prefixes, progress=progress
        )
        preds = [choices[max(range(len(choices)), key=lambda j: s[j])] for s in scores]
        outputs = list(preds)

    out = CellResult()
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for idx, (p, o, pred) in enumerate(zip(prompts, outputs, preds)):
        q = p.query
        row = {
            "id": q.id,
            "model": model_label,
            "method": method_label(spec, p.shots),
            "task": task.name,
            "variant": q.variant,
            "shots": p.shots,
            "shots_used": p.shots_used,
            "demo_ids": [d.id for d in p.demos],
            "scoring": scoring,
            "seed": spec.seed,
            "prompt": p.text,
            "output": o,
            "prediction": pred,
            "target": q.target,
            "shortcut_target": q.shortcut_target,
            "correct": (q.target in o) if judge == "substring" else pred == q.target,
            "substring_correct": q.target in o,
            "shortcut_answer": pred == q.shortcut_target,
        }
        if scores is not None:
            row["scores"] = dict(zip(task.choices or (), scores[idx]))
        out.predictions.append(row)
        cells.setdefault((q.variant, p.shots), []).append(row)
    for (variant, k), rows in cells.items():
        n = len(rows)
        correct = sum(r["correct"] for r in rows)
        # shortcut-following where it matters: items on which the shortcut answer is wrong
        conflict = [r for r in rows if r["shortcut_target"] != r["target"]]
        lo, hi = wilson_interval(correct, n)
        out.results.append(
            {
                "model": model_label,
                "task": task.name,
                "variant": variant,
                "method": method_label(spec, k),
                "shots": k,
                "shots_used_mean": sum(r["shots_used"] for r in rows) / n,
                "truncated": sum(r["shots_used"] < k for r in rows),
                "demos": spec.demos,
                "scoring": scoring,
                "protocol": spec.protocol,
                "seed": spec.seed,
                "n": n,
                "correct": correct,
                "accuracy": correct / n,
                "ci_low": lo,
                "ci_high": hi,
                "substring_accuracy": sum(r["substring_correct"] for r in rows) / n,
                "shortcut_rate": sum(r["shortcut_answer"] for r in rows) / n,
                # what a model answering only by the shortcut scores on these very items (1 on
                # clean items by construction; the task declares its misleading value)
                "shortcut_only_accuracy": sum(r["shortcut_target"] == r["target"] for r in rows)
                / n,
                "conflict_n": len(conflict),
                "conflict_shortcut_rate": (
                    sum(r["shortcut_answer"] for r in conflict) / len(conflict)
                    if conflict
                    else None
                ),
                "parse_failures": sum(r["prediction"] is None for r in rows),
            }
        )
    return out


def run_eval(
    spec: EvalSpec,
    out_dir: Path,
    *,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    batch_size: int = 16,
    show_progress: bool = True,
) -> CellResult:
    """``iclft eval``: load the model, evaluate every cell, write results, predictions and
    manifest into ``out_dir``. Everything is checked before the model loads."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from iclft.models.loading import load_model
    from iclft.models.registry import DEFAULT_MODEL
    from iclft.store import ensure_writable_dir, write_jsonl_atomic, write_manifest

    spec.check()
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    out_dir = ensure_writable_dir(Path(out_dir))
    started = time.time()
    console = Console(stderr=True)
    loaded = load_model(
        model or DEFAULT_MODEL, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    t_loaded = time.time()
    engine = Engine(
        loaded.model, loaded.tokenizer, batch_size=batch_size, max_new_tokens=spec.max_new_tokens
    )
    label = loaded.resolved.spec
    for name in spec.tasks:
        check_fit(engine, get_task(name), spec)
    total = len(spec.tasks) * len(spec.variants) * len(spec.shots) * spec.n
    result = CellResult()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show_progress,
    ) as bar:
        job = bar.add_task("eval", total=total)
        for name in spec.tasks:
            bar.update(job, description=f"eval {name}")
            cell = evaluate_task(
                engine,
                get_task(name),
                spec,
                model_label=label,
                progress=lambda k: bar.advance(job, k),
            )
            engine.clear()
            result.results += cell.results
            result.predictions += cell.predictions
    write_jsonl_atomic(out_dir / "predictions.jsonl", result.predictions)
    write_jsonl_atomic(out_dir / "results.jsonl", result.results)
    write_manifest(
        out_dir,
        command="eval",
        started=started,
        model=loaded.resolved.describe(),
        device=str(loaded.device),
        dtype=str(loaded.dtype).replace("torch.", ""),
        attn_implementation=loaded.attn_implementation,
        seeds=[spec.seed],
        spec={**spec.__dict__},
        batch_size=batch_size,
        timings={
            "load_seconds": round(t_loaded - started, 3),
            "eval_seconds": round(time.time() - t_loaded, 3),
        },
        engine_stats=engine.stats.__dict__,
    )
    return result


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise UserError(f"no {what} given")
    return vals


def unique(seq: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(seq))
