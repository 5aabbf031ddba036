"""Rescoring saved predictions without the model: ``iclft rescore EVAL_DIR --protocol P -o OUT``.

Every prediction row keeps the model's raw ``output``; rescoring judges it again with the
registered scorer of its scoring (:mod:`iclft.icl.scoring`) under protocol ``P`` (``exact``:
the parse equals the target; ``paper``: the target occurs in the output) and rebuilds each
cell's results row exactly as ``iclft eval`` does (same metrics and intervals, same bootstrap
seeds), so rescoring with the protocol a directory was evaluated with reproduces its
results.jsonl. The source directory is never modified.

What rescoring cannot change: the outputs themselves. A directory evaluated with ``exact`` holds
continuations cut at the newline after the answer; judging those with ``paper`` is the paper's
*judge* on our outputs, not the paper's protocol (which generates a fixed-length continuation
with no stop, so its substring test sees more text). The output manifest says which.
"""

from __future__ import annotations

import json
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
    ensure_writable_dir,
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


def rescore_rows(
    predictions: list[Prediction], spec: EvalSpec, protocol: str
) -> tuple[list[Prediction], list[CellResult]]:
    """(predictions judged again under ``protocol``, the results rows of their cells)."""
    if protocol not in PROTOCOLS:
        raise UnknownNameError("protocol", protocol, PROTOCOLS)
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
        cells.setdefault((p.model, p.task, p.split, p.variant, p.shots), []).append(row)
    results = [
        cell_result(cell, new_spec, model_label=key[0], task=key[1], scoring=cell[0].scoring)
        for key, cell in cells.items()
    ]
    return rows, results


def rescore_dir(source: Path, protocol: str, out_dir: Path) -> list[dict[str, Any]]:
    """Rescore the ``iclft eval`` directory ``source`` into ``out_dir``; return its results."""
    source, out_dir = Path(source), Path(out_dir)
    started = time.time()
    if (source / "stages").is_dir():
        raise UserError(
            f"{source} is an `iclft run` directory; rescoring works on `iclft eval` directories "
            "(a run's stages are not rescored yet)"
        )
    try:
        manifest = json.loads((source / MANIFEST_NAME).read_text())
        path = source / "predictions.jsonl"
        predictions = [
            Prediction.from_json(d, f"{path}:{i}") for i, d in enumerate(read_jsonl(path), 1)
        ]
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{source} is not an `iclft eval` directory (manifest.json and predictions.jsonl "
            f"are needed): {exc}"
        ) from None
    if manifest.get("command") != "eval":
        raise UserError(f"{source} was written by `iclft {manifest.get('command')}`, not eval")
    if out_dir.resolve() == source.resolve():
        raise UserError("rescore writes a new directory; give -o another directory than the source")
    spec = _spec_from_manifest(manifest)
    rows, results = rescore_rows(predictions, spec, protocol)
    out_dir = ensure_writable_dir(out_dir)
    write_jsonl_atomic(out_dir / "predictions.jsonl", rows)
    write_jsonl_atomic(out_dir / "results.jsonl", results)
    generated_stop = PROTOCOLS[spec.protocol][0]
    write_manifest(
        out_dir,
        command="rescore",
        started=started,
        source=str(source.resolve()),
        model=manifest.get("model"),
        seeds=manifest.get("seeds"),
        spec={**spec.__dict__, "protocol": protocol},
        outputs_generated_with={"protocol": spec.protocol, "stop": generated_stop},
        note=(
            "the paper's judge (target as a substring) on outputs that stopped at a newline; "
            "the paper's protocol generates a fixed-length continuation with no stop"
        )
        if protocol == "paper" and generated_stop != "none"
        else None,
    )
    return results
