"""Rescoring saved predictions without the model: ``iclft rescore DIR --protocol P -o OUT``.

Every prediction row keeps the model's raw ``output``; rescoring judges it again with the
registered scorer of its scoring (:mod:`iclft.icl.scoring`) under protocol ``P`` (``exact``: the
parse equals the target; ``paper``: the target occurs in the output) and rebuilds each cell's
results row exactly as evaluation does (same metrics, same intervals, same bootstrap seeds), so
rescoring with the protocol a directory was evaluated with reproduces its results.jsonl. The
source directory is never modified.

``DIR`` is an ``iclft eval`` directory (predictions.jsonl, results.jsonl); an ``iclft run``
directory is rescored stage by stage at the run level (:mod:`iclft.run.rescore`), with the
functions here.

What rescoring cannot change: the outputs themselves. A directory evaluated with ``exact`` holds
continuations cut at the newline after the answer; judging those with ``paper`` is the paper's
*judge* on our outputs, not the paper's protocol (which generates each task's token budget
with no stop, so its substring test may see other text). The output manifest says which.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from iclft.errors import UnknownNameError, UserError
from iclft.icl.evaluate import cell_result
from iclft.icl.scoring import PROTOCOLS, get_scorer
from iclft.icl.settings import EvalSpec
from iclft.records import CellResult, Prediction
from iclft.store import (
    MANIFEST_NAME,
    claim_output_dir,
    read_jsonl,
    write_jsonl_atomic,
    write_manifest,
)
from iclft.tasks import get_task


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
    new_spec = spec.model_copy(update={"protocol": protocol})  # outputs are judged, not made
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
    results = {key: cell_result(cell, new_spec) for key, cell in cells.items()}
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
    """Rescore the ``iclft eval`` directory ``source`` into ``out_dir``; return the new
    results rows. ``out_dir``: see :func:`_prepare_out`. (An ``iclft run`` directory is the
    run level's: :func:`iclft.run.rescore.rescore_run`.)"""
    source, out_dir = Path(source), Path(out_dir)
    _check_protocol(protocol)
    if (source / "stages").is_dir():
        raise UserError(
            f"{source} is an `iclft run` directory: rescore it with "
            "iclft.run.rescore.rescore_run (what `iclft rescore` does)"
        )
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


def _prepare_out(out_dir: Path, force: bool) -> Path:
    """A new or empty ``out_dir``, or an earlier rescore's (cleared: replaced whole); another's
    is refused unless ``force`` (:func:`iclft.store.claim_output_dir`)."""
    claim = claim_output_dir(out_dir, "rescore", force=force)
    if claim.state == "own":
        claim.clear()
    return claim.path
