"""Rescoring saved predictions without the model: ``iclft rescore DIR --protocol P -o OUT``.

Every prediction row keeps the model's raw ``output``; rescoring judges it again with the
registered scorer of its scoring (:mod:`iclft.icl.scoring`) under protocol ``P`` (``exact``: the
parse equals the target; ``paper``: the target occurs in the output) and rebuilds each cell's
results row exactly as evaluation does (same metrics, same intervals, same bootstrap seeds), so
rescoring with the protocol a directory was evaluated with reproduces its results.jsonl. The
source directory is never modified.

``DIR`` is an ``iclft eval`` directory (predictions.jsonl, results.jsonl) or an ``iclft run``
directory. For a run, each completed evaluation stage's ``predictions/<key>.jsonl`` is rescored
with that stage's spec (the run's config.json and the stage), each cell's row keeps the fields
the runner added (``stage``, ``step``, ``train_examples``, ``ft_dir``, ``checkpoint``) from the
original row of the same cell, the stage records are rewritten with their new rows, and
results.jsonl and comparisons.jsonl are rebuilt in plan order, as the runner builds them. OUT
gets what ``iclft report`` reads besides: the config (its ``protocol`` set to ``P``), each
fine-tuning run's curves.csv and manifest.json (its weights and checkpoints stay in the
source) and the analysis files, copied as they are (analyses are not rescored).

What rescoring cannot change: the outputs themselves. A directory evaluated with ``exact`` holds
continuations cut at the newline after the answer; judging those with ``paper`` is the paper's
*judge* on our outputs, not the paper's protocol (which generates each task's token budget
with no stop, so its substring test may see other text). The output manifest says which.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from iclft.errors import UnknownNameError, UserError
from iclft.icl.evaluate import EvalSpec, cell_result
from iclft.icl.scoring import PROTOCOLS, get_scorer
from iclft.records import CellResult, Prediction
from iclft.store import (
    MANIFEST_NAME,
    claim_output_dir,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_manifest,
)
from iclft.tasks import get_task

#: what a run's fine-tuning directory gives the report (weights and checkpoints stay behind)
FINETUNE_FILES = ("curves.csv", MANIFEST_NAME)
#: the analysis files the report reads (figures and results)
ANALYSIS_SUFFIXES = (".json", ".png", ".csv")


def _spec_from_manifest(manifest: dict[str, Any]) -> EvalSpec:
    raw = dict(manifest["spec"])
    for key in ("tasks", "variants", "shots"):
        raw[key] = tuple(raw[key])
    return EvalSpec(**raw)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UnknownNameError("protocol", protocol, PROTOCOLS)


def _cell_key(r: Prediction | CellResult) -> tuple:
    """What tells one cell from another across stages, checkpoints and demonstration sets."""
    return (r.model, r.step, r.checkpoint, r.task, r.split, r.variant, r.shots, r.method)


def rescore_rows(
    predictions: list[Prediction], spec: EvalSpec, protocol: str
) -> tuple[list[Prediction], list[CellResult]]:
    """(predictions judged again under ``protocol``, the results rows of their cells, in the
    order their cells first appear)."""
    rows, cells = _rescore_cells(predictions, spec, protocol)
    return rows, list(cells.values())


def _rescore_cells(
    predictions: list[Prediction], spec: EvalSpec, protocol: str
) -> tuple[list[Prediction], dict[tuple, CellResult]]:
    """:func:`rescore_rows` with each results row under its cell's key (:func:`_cell_key`)."""
    _check_protocol(protocol)
    new_spec = replace(spec, protocol=protocol)
    rows: list[Prediction] = []
    cells: dict[tuple, list[Prediction]] = {}
    for p in predictions:
        if p.scoring is None:
            raise UserError(
                f"a prediction of {p.task} (item {p.id}) does not say how it was scored; "
                "predictions written before rows carried their scoring cannot be rescored"
            )
        judged = get_scorer(p.scoring, protocol)(get_task(p.task), p, p.output)
        row = p.replace(
            prediction=judged.prediction,
            correct=judged.correct,
            substring_correct=judged.substring_correct,
            shortcut_answer=judged.shortcut_answer,
        )
        rows.append(row)
        cells.setdefault(_cell_key(p), []).append(row)
    results = {
        key: cell_result(
            cell, new_spec, model_label=cell[0].model, task=cell[0].task, scoring=cell[0].scoring
        )
        for key, cell in cells.items()
    }
    return rows, results


def _read_predictions(path: Path) -> list[Prediction]:
    return [Prediction.from_json(d, f"{path}:{i}") for i, d in enumerate(read_jsonl(path), 1)]


def _check_out(source: Path, out_dir: Path) -> None:
    src, out = source.resolve(), out_dir.resolve()
    if out == src:
        raise UserError("rescore writes a new directory; give -o another directory than the source")
    if src in out.parents:
        raise UserError(f"rescore leaves the source as it is; give -o a directory outside {source}")


def _generated_with(protocol: str) -> dict[str, str]:
    return {"protocol": protocol, "stop": PROTOCOLS[protocol][0]}


def _judge_note(protocol: str, generated: str) -> str | None:
    if protocol == "paper" and PROTOCOLS[generated][0] == "newline":
        return (
            "the paper's judge (target as a substring) on outputs that stopped at a newline; "
            "the paper's protocol generates each task's token budget with no stop"
        )
    return None


def rescore_dir(
    source: Path, protocol: str, out_dir: Path, *, force: bool = False
) -> list[CellResult]:
    """Rescore the ``iclft eval`` or ``iclft run`` directory ``source`` into ``out_dir``;
    return the new results rows. ``out_dir``: see :func:`_prepare_out`."""
    source, out_dir = Path(source), Path(out_dir)
    _check_protocol(protocol)
    if (source / "stages").is_dir():
        return rescore_run(source, protocol, out_dir, force=force)
    started = time.time()
    try:
        manifest = json.loads((source / MANIFEST_NAME).read_text())
        predictions = _read_predictions(source / "predictions.jsonl")
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{source} is not an `iclft eval` directory (manifest.json and predictions.jsonl "
            f"are needed) nor an `iclft run` directory (stages/): {exc}"
        ) from None
    if manifest.get("command") != "eval":
        raise UserError(f"{source} was written by `iclft {manifest.get('command')}`, not eval")
    _check_out(source, out_dir)
    spec = _spec_from_manifest(manifest)
    rows, results = rescore_rows(predictions, spec, protocol)
    out_dir = _prepare_out(out_dir, force)
    write_jsonl_atomic(out_dir / "predictions.jsonl", rows)
    write_jsonl_atomic(out_dir / "results.jsonl", results)
    write_manifest(
        out_dir,
        command="rescore",
        started=started,
        source=str(source.resolve()),
        model=manifest.get("model"),
        seeds=manifest.get("seeds"),
        spec={**spec.__dict__, "protocol": protocol},
        outputs_generated_with=_generated_with(spec.protocol),
        note=_judge_note(protocol, spec.protocol),
    )
    return results


def _run_config(source: Path):
    from iclft.config import validate_config

    path = source / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{source} has stages/ but no readable config.json, so it is not an `iclft run` "
            f"directory: {exc}"
        ) from None
    manifest_path = source / MANIFEST_NAME
    if manifest_path.exists():
        try:
            command = json.loads(manifest_path.read_text()).get("command")
        except ValueError:
            command = None
        if command == "rescore":
            raise UserError(
                f"{source} is itself a rescored run; rescore the run it came from (its "
                "manifest's source) instead"
            )
    return raw, validate_config(raw, str(path))


def _prepare_out(out_dir: Path, force: bool) -> Path:
    """A new or empty ``out_dir``, or an earlier rescore's (cleared: replaced whole); another's
    is refused unless ``force`` (:func:`iclft.store.claim_output_dir`)."""
    claim = claim_output_dir(out_dir, "rescore", force=force)
    if claim.state == "own":
        claim.clear()
    return claim.path


def _copy_report_inputs(source: Path, out_dir: Path) -> None:
    """The fine-tuning curves and manifests and the analysis files, as the report reads them."""
    for method_dir in sorted(p for p in (source / "finetune").glob("*/*") if p.is_dir()):
        for name in FINETUNE_FILES:
            if (method_dir / name).is_file():
                target = out_dir / method_dir.relative_to(source) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(method_dir / name, target)
    analysis = source / "analysis"
    for p in sorted(analysis.rglob("*")) if analysis.is_dir() else []:
        if p.is_file() and p.suffix in ANALYSIS_SUFFIXES:
            target = out_dir / p.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)


def _rescore_stage(
    source: Path, out_dir: Path, key: str, record: dict[str, Any], spec: EvalSpec, protocol: str
) -> list[CellResult]:
    """Rescore one evaluation stage's predictions and write them and its new record."""
    pred_path = source / "predictions" / f"{key}.jsonl"
    rows, results = _rescore_cells(_read_predictions(pred_path), spec, protocol)
    where = source / "stages" / f"{key}.json"
    original = {
        _cell_key(r): r
        for r in (CellResult.from_json(d, f"{where}") for d in record.get("results", []))
    }
    if set(original) != set(results):
        raise UserError(
            f"{where}: its results rows and {pred_path} are not the same cells; the run "
            "directory was changed after it was written"
        )
    kept = [
        r.replace(**{f: getattr(original[cell], f) for f in CellResult.ADDED_BY_RUNNER})
        for cell, r in results.items()
    ]
    write_jsonl_atomic(out_dir / "predictions" / f"{key}.jsonl", rows)
    write_json_atomic(out_dir / "stages" / f"{key}.json", {**record, "results": kept})
    return kept


def rescore_run(
    source: Path, protocol: str, out_dir: Path, *, force: bool = False
) -> list[CellResult]:
    """Rescore the ``iclft run`` directory ``source`` into ``out_dir`` (see the module
    docstring); return the new results rows in plan order."""
    from iclft.runner import plan, rebuild_comparisons, rebuild_results
    from iclft.stages import eval_spec

    source, out_dir = Path(source), Path(out_dir)
    _check_protocol(protocol)
    started = time.time()
    raw, cfg = _run_config(source)
    _check_out(source, out_dir)
    out_dir = _prepare_out(out_dir, force)
    stages = plan(cfg)
    rescored: list[str] = []
    for st in stages:
        path = source / "stages" / f"{st.key}.json"
        if not path.exists():  # not completed: left out, as the runner's rebuild does
            continue
        record = json.loads(path.read_text())
        if not (source / "predictions" / f"{st.key}.jsonl").exists():  # not an evaluation
            write_json_atomic(out_dir / "stages" / f"{st.key}.json", record)
            continue
        shots = sorted({int(r["shots"]) for r in record.get("results", [])}) or [0]
        spec = eval_spec(cfg, st, shots, st.method)
        _rescore_stage(source, out_dir, st.key, record, spec, protocol)
        rescored.append(st.key)
    rows = rebuild_results(out_dir, stages)
    comparisons = rebuild_comparisons(out_dir, stages)
    write_json_atomic(out_dir / "config.json", {**raw, "protocol": protocol})
    _copy_report_inputs(source, out_dir)
    try:
        old = json.loads((source / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        old = {}
    write_manifest(
        out_dir,
        command="rescore",
        started=started,
        source=str(source.resolve()),
        config=cfg.name,
        models=old.get("models"),
        seeds=cfg.seeds,
        protocol=protocol,
        stages_rescored=rescored,
        rows=len(rows),
        comparisons=len(comparisons),
        outputs_generated_with=_generated_with(cfg.protocol),
        note=_judge_note(protocol, cfg.protocol),
        not_copied=(
            "fine-tuned weights and checkpoints (they stay in the source's finetune/); the "
            "analysis results are copied as they were computed, not rescored"
        ),
    )
    return [CellResult.from_json(r) for r in rows]
