"""In-context-learning evaluation: a grid of (task, variant, shots) cells scored by the engine.

Scoring functions are interchangeable (inspect_ai style): ``generate`` decodes greedily and
parses the continuation with the task's parser; ``loglik`` picks the choice with the highest
total log-probability (lm-evaluation-harness' convention). ``auto`` is loglik for choice tasks
and generate otherwise. Each response is judged by the registered scorer of its scoring
(:mod:`iclft.icl.scoring`) and each cell's row composed from the registered metrics
(:mod:`iclft.icl.metrics`).

Two protocols (:data:`PROTOCOLS`): ``exact`` (ours) skips leading whitespace and newlines,
stops at the next newline, parses the first non-empty line and requires an exact match;
``paper`` is the seed paper's code: each task's token budget
(:data:`iclft.icl.scoring.PAPER_NEW_TOKENS`, 1-3 tokens) with no stop, scored correct when
``str(target)`` occurs anywhere in it (so "2" is found in "12") or is parsed from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclft.errors import UserError
from iclft.icl.decode import decode_steps
from iclft.icl.engine import Engine, context_limit
from iclft.icl.metrics import cell_metrics
from iclft.icl.prompts import (
    ChatFormat,
    DemoPool,
    Prompt,
    build_prompt,
)
from iclft.icl.scoring import PROTOCOLS, get_scorer, token_budget
from iclft.icl.settings import BATCH_SIZE, EvalSpec, parse_batch_size
from iclft.records import BASELINE, ICL, CellResult, Prediction
from iclft.tasks import Example, Task, get_task, splits

log = logging.getLogger(__name__)


def demo_sets_for(spec: EvalSpec, shots: int) -> range:
    """The demonstration sets a cell with ``shots`` is evaluated over (one for 0 shots)."""
    return range(spec.demo_sets if shots > 0 else 1)


def selects_shots(spec: EvalSpec) -> bool:
    """Whether held-out items are evaluated: asked for, and two or more k > 0 to choose from."""
    return spec.heldout_n > 0 and sum(k > 0 for k in spec.shots) >= 2


def prompt_count(spec: EvalSpec) -> int:
    """Prompts one task of ``spec`` scores (for progress bars)."""
    test = sum(len(demo_sets_for(spec, k)) for k in spec.shots) * len(spec.variants) * spec.n
    held = sum(len(demo_sets_for(spec, k)) for k in spec.shots if k > 0) * spec.heldout_n
    return test + (held if selects_shots(spec) else 0)


def heldout_items(task: Task, spec: EvalSpec) -> list[Example]:
    """Clean items from their own index range, minus any whose question is a test item's."""
    test = splits.questions_tested(task, spec.seed, spec.n, spec.variants)
    return splits.heldout_items(task, spec.seed, spec.heldout_n, test)


def demo_pools(task: Task, spec: EvalSpec) -> list[DemoPool]:
    """The demonstration pool of each set, avoiding every question the spec's test and
    held-out items hold (of every variant, so a cell's prompts do not depend on which variants
    a run evaluates)."""
    avoid = splits.scored_questions(task, spec.seed, test_n=spec.n, heldout_n=spec.heldout_n)
    return [
        DemoPool(task, spec.seed, spec.demos, max(spec.shots), s, avoid)
        for s in range(spec.demo_sets)
    ]


def new_tokens(task: Task, spec: EvalSpec) -> int:
    """The token budget of one generated answer (see :func:`iclft.icl.scoring.token_budget`)."""
    return token_budget(spec.protocol, task.name, spec.max_new_tokens)


def method_label(spec: EvalSpec, shots: int) -> str:
    """The row label of an evaluated setting: the spec's method, else baseline / icl."""
    return spec.method or (BASELINE if shots == 0 else ICL)


def scoring_for(task: Task, scoring: str, protocol: str = "exact") -> str:
    if protocol == "paper":  # the seed code generated for every task, choice tasks too
        return "generate"
    if scoring == "auto":
        return "loglik" if task.is_choice else "generate"
    return scoring


@dataclass
class Evaluation:
    """What an evaluation produced: one row per cell and one per scored prompt."""

    results: list[CellResult] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)


def _fit_prompts(
    engine: Engine,
    task: Task,
    pool: DemoPool,
    query: Example,
    index: int,
    k: int,
    reserve: int,
    heldout: bool = False,
    chat: ChatFormat | None = None,
) -> Prompt:
    """The k-shot prompt, dropping demonstrations from the end until it fits the context."""
    limit = context_limit(engine.model)
    demos = pool.demos(query, index, k, heldout)
    prompt = build_prompt(task, query, demos, k, pool.demo_set, chat)
    if limit is None:
        return prompt
    while len(engine.encode(prompt.text)) + reserve > limit:
        if not demos:
            raise UserError(
                f"a {task.name} query alone needs {len(engine.encode(prompt.text))} tokens, "
                f"more than the model's context of {limit}"
            )
        demos = demos[:-1]
        prompt = build_prompt(task, query, demos, k, pool.demo_set, chat)
    return prompt


def _check_shots_fit(
    engine: Engine,
    task: Task,
    pool: DemoPool,
    query: Example,
    k: int,
    reserve: int,
    chat: ChatFormat | None = None,
):
    """Refuse shot counts that cannot fit at all (rather than silently truncating them all)."""
    limit = context_limit(engine.model)
    if limit is None or k == 0:
        return
    demos = pool.candidates(query, 0)[:1]
    base = len(engine.encode(build_prompt(task, query, [], 0, chat=chat).text)) + reserve
    with_one = len(engine.encode(build_prompt(task, query, demos, 1, chat=chat).text))
    one = max(with_one + reserve - base, 1) if demos else 1
    fits = max(0, (limit - base) // max(one, 1))
    if k > 2 * fits + 1:  # truncation handles the margin; this is clearly too many
        raise UserError(
            f"--shots {k} cannot fit the model's context of {limit} tokens: a {task.name} "
            f"demonstration takes about {one} tokens, so at most about {fits} shots fit"
        )


def chat_format(engine: Engine, spec: EvalSpec, model: str = "the model") -> ChatFormat | None:
    """The chat template renderer ``spec`` asks for (``None``: plain prompts)."""
    return (
        None if spec.chat_template == "none" else ChatFormat(engine.tok, spec.chat_template, model)
    )


def check_fit(engine: Engine, task: Task, spec: EvalSpec) -> None:
    """Refuse shot counts that cannot fit the model's context (before any work starts)."""
    scoring = scoring_for(task, spec.scoring, spec.protocol)
    stop = PROTOCOLS[spec.protocol][0]
    reserve = decode_steps(new_tokens(task, spec), stop) if scoring == "generate" else 8
    pool = DemoPool(task, spec.seed, spec.demos, max(spec.shots))
    first = task.generate(spec.variants[0], 1, spec.seed)[0]
    chat = chat_format(engine, spec)
    for k in spec.shots:
        _check_shots_fit(engine, task, pool, first, k, reserve, chat)


def evaluate_task(
    engine: Engine,
    task: Task,
    spec: EvalSpec,
    *,
    model_label: str,
    progress: Callable[[int], None] | None = None,
    items: dict[str, list[Example]] | None = None,
    split: str = "test",
) -> Evaluation:
    """All (variant, shots) cells of one task: one engine call, so caches are shared.

    ``items``: the queries of each variant instead of the spec's test items (a fine-tuning
    curve's), scored with the same settings and labelled ``split``."""
    scoring = scoring_for(task, spec.scoring, spec.protocol)
    stop = PROTOCOLS[spec.protocol][0]
    score = get_scorer(scoring, spec.protocol)
    budget = new_tokens(task, spec)
    pools = demo_pools(task, spec)
    queries = (
        items
        if items is not None
        else {v: task.generate(v, spec.n, spec.seed) for v in spec.variants}
    )
    heldout = heldout_items(task, spec) if selects_shots(spec) and items is None else []
    reserve = decode_steps(budget, stop) if scoring == "generate" else 8
    check_fit(engine, task, spec)
    chat = chat_format(engine, spec, model_label)
    prompts: list[Prompt] = []
    labels: list[str] = []  # each prompt's split
    for k in spec.shots:
        for s in demo_sets_for(spec, k):
            for v in queries:
                for i, q in enumerate(queries[v]):
                    prompts.append(
                        _fit_prompts(engine, task, pools[s], q, i, k, reserve, chat=chat)
                    )
                    labels.append(split)
            if k > 0:
                for i, q in enumerate(heldout):
                    prompts.append(
                        _fit_prompts(engine, task, pools[s], q, i, k, reserve, True, chat)
                    )
                    labels.append("heldout")
    texts = [p.text for p in prompts]
    prefixes = [p.prefix for p in prompts]
    scores: list[list[float]] | None = None
    if scoring == "generate":
        outputs = engine.generate(
            texts, prefixes, max_new_tokens=budget, stop=stop, progress=progress
        )
    else:
        choices = list(task.choices or ())
        scores = engine.loglik(
            texts, [[" " + c for c in choices]] * len(texts), prefixes, progress=progress
        )
        outputs = [choices[max(range(len(choices)), key=lambda j: s[j])] for s in scores]

    out = Evaluation()
    cells: dict[tuple[str, str, int], list[Prediction]] = {}
    for idx, (p, label, o) in enumerate(zip(prompts, labels, outputs)):
        q = p.query
        judged = score(task, q, o)
        row = Prediction(
            id=q.id,
            model=model_label,
            method=method_label(spec, p.shots),
            task=task.name,
            variant=q.variant,
            shots=p.shots,
            shots_used=p.shots_used,
            demo_set=p.demo_set,
            split=label,
            chat_template=spec.chat_template,
            demo_ids=[d.id for d in p.demos],
            scoring=scoring,
            seed=spec.seed,
            prompt=p.text,
            output=o,
            prediction=judged.prediction,
            target=q.target,
            shortcut_target=q.shortcut_target,
            correct=judged.correct,
            substring_correct=judged.substring_correct,
            shortcut_answer=judged.shortcut_answer,
            scores=None if scores is None else dict(zip(task.choices or (), scores[idx])),
        )
        out.predictions.append(row)
        cells.setdefault((label, q.variant, p.shots), []).append(row)
    for rows in cells.values():
        out.results.append(cell_result(rows, spec))
    for r in out.results:
        if r.truncated:
            split = " (held-out)" if r.split == "heldout" else ""
            log.warning(
                "warning: %s %s%s: --shots %d did not fit the model's context of %s tokens in "
                "%d of %d prompts; shots used: %s (results.jsonl: shots_used_mean, truncated)",
                r.task, r.variant, split, r.shots, context_limit(engine.model), r.truncated,
                r.n_scored, r.shots_text,
            )  # fmt: skip
    return out


def cell_result(rows: Sequence[Prediction], spec: EvalSpec) -> CellResult:
    """The results row of one cell: its key and scoring (its predictions'), the spec's
    settings, and every metric of :mod:`iclft.icl.metrics` over its predictions (every
    demonstration set's)."""
    first = rows[0]
    scoring = first.scoring
    return CellResult(
        **{name: getattr(first, name) for name in CellResult.KEY},
        **spec.model_dump(include=set(CellResult.FROM_SPEC)),
        scoring=scoring,
        max_new_tokens=new_tokens(get_task(first.task), spec) if scoring == "generate" else None,
        **cell_metrics(rows),
    )


def run_eval(
    spec: EvalSpec,
    out_dir: Path,
    *,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "auto",
    batch_size: int | str = BATCH_SIZE,
    show_progress: bool = True,
    cache: Path | str | None = None,
    force: bool = False,
) -> Evaluation:
    """``iclft eval``: load the model, evaluate every cell, write results, predictions and
    manifest into ``out_dir``. Everything is checked before the model loads. ``out_dir`` must
    be new, empty or an earlier ``iclft eval`` output (replaced whole once the new results are
    in); another's is refused unless ``force`` (:func:`iclft.store.claim_output_dir`).

    Under ``accelerate launch`` with N processes each scores its share of every engine call
    (:mod:`iclft.distributed`) and rank 0 writes the same files one process writes, with
    ``processes`` and ``prompts_per_process`` in the manifest."""
    from iclft import distributed
    from iclft.logs import progress
    from iclft.models.loading import load_model
    from iclft.models.registry import DEFAULT_MODEL
    from iclft.store import claim_output_dir, write_jsonl_atomic, write_manifest

    batch_size = parse_batch_size(batch_size)
    shard = distributed.current()
    main = shard is None or shard.rank == 0
    if shard is None:
        claim = claim_output_dir(Path(out_dir), "eval", force=force)
    else:
        claim = shard.on_main(lambda: claim_output_dir(Path(out_dir), "eval", force=force))
        if device == "auto":  # each process its own device (accelerate's choice)
            device = shard.device
    out_dir = claim.path
    started = time.time()
    loaded = load_model(
        model or DEFAULT_MODEL, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    t_loaded = time.time()
    responses = None
    if cache is not None:
        from iclft.icl.cache import ResponseCache

        if shard is not None:  # rank 0 creates the file before the others open it
            shard.on_main(lambda: ResponseCache.for_model(cache, loaded).close())
        responses = ResponseCache.for_model(cache, loaded)
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        batch_size=batch_size,
        max_new_tokens=spec.max_new_tokens,
        cache=responses,
        shard=shard,
    )
    label = loaded.resolved.spec
    for name in spec.tasks:
        check_fit(engine, get_task(name), spec)
    total = len(spec.tasks) * prompt_count(spec)
    result = Evaluation()
    with progress(show_progress and main) as shown:
        job = shown.task(f"eval {spec.tasks[0]}", total)
        for name in spec.tasks:
            job.update(description=f"eval {name}")
            cell = evaluate_task(
                engine, get_task(name), spec, model_label=label, progress=job.advance
            )
            engine.clear()
            result.results += cell.results
            result.predictions += cell.predictions
    stats = engine.stats.__dict__
    if shard is not None:  # every process's engine counters, summed
        every = shard.gather(stats)
        stats = {k: sum(s[k] for s in every) for k in stats}
    busy = [round(engine.busy_seconds, 3)]
    if shard is not None:
        busy = shard.gather(busy[0])
    if not main:
        return result
    if claim.state == "own":  # an earlier eval here: replaced whole, never mixed with this one
        claim.clear(keep=[cache])
    write_jsonl_atomic(out_dir / "predictions.jsonl", result.predictions)
    write_jsonl_atomic(out_dir / "results.jsonl", result.results)
    write_manifest(
        out_dir,
        command="eval",
        started=started,
        model=loaded.describe(),
        device=str(loaded.device),
        dtype=str(loaded.dtype).replace("torch.", ""),
        attn_implementation=loaded.attn_implementation,
        seeds=[spec.seed],
        spec={**spec.__dict__},
        batch_size=batch_size if batch_size != "auto" else {"auto": engine.batch_size},
        response_cache=None
        if responses is None
        else {"path": str(responses.path), "hits": responses.hits, "misses": responses.misses},
        timings={
            "load_seconds": round(t_loaded - started, 3),
            "eval_seconds": round(time.time() - t_loaded, 3),
        },
        engine_stats=stats,
        processes=1 if shard is None else shard.world,
        prompts_per_process=engine.prompts_per_process,
        seconds_per_process=busy,
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
