"""Rescoring an ``iclft run`` directory: ``iclft rescore RUN --protocol P -o OUT``.

The run level of :mod:`iclft.icl.rescore` (which judges saved outputs again and rebuilds the
results rows of one evaluation): each completed evaluation stage's ``predictions/<key>.jsonl``
is rescored with that stage's spec (the run's config.json and the stage), each cell's row keeps
the fields the runner added (``stage``, ``step``, ``train_examples``, ``ft_dir``,
``checkpoint``) from the original row of the same cell, the stage records are rewritten with
their new rows, and results.jsonl and comparisons.jsonl are rebuilt in plan order, as the
runner builds them. OUT gets what ``iclft report`` reads besides: the config (its ``protocol``
set to ``P``), each fine-tuning run's curves.csv and manifest.json (its weights and checkpoints
stay in the source) and the analysis files, copied as they are (analyses are not rescored).
The source directory is never modified.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from iclft.errors import UserError
from iclft.icl.rescore import (
    _cell_key,
    _check_out,
    _check_protocol,
    _generated_with,
    _judge_note,
    _prepare_out,
    _read_predictions,
    _rescore_cells,
    rescore_dir,
)
from iclft.icl.settings import EvalSpec
from iclft.records import CellResult
from iclft.run.config import validate_config
from iclft.run.plan import plan
from iclft.run.runner import rebuild_comparisons, rebuild_results
from iclft.run.stages import eval_spec
from iclft.store import MANIFEST_NAME, write_json_atomic, write_jsonl_atomic, write_manifest

#: what a run's fine-tuning directory gives the report (weights and checkpoints stay behind)
FINETUNE_FILES = ("curves.csv", MANIFEST_NAME)
#: the analysis files the report reads (figures and results)
ANALYSIS_SUFFIXES = (".json", ".png", ".csv")


def rescore(source: Path, protocol: str, out_dir: Path, *, force: bool = False) -> list[CellResult]:
    """Rescore an ``iclft run`` directory (it has ``stages/``) or an ``iclft eval`` one."""
    if (Path(source) / "stages").is_dir():
        return rescore_run(source, protocol, out_dir, force=force)
    return rescore_dir(source, protocol, out_dir, force=force)


def _run_config(source: Path):
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
