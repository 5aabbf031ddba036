"""The names similarity.json is keyed by, and its controls table (CLI and report), without
torch: the report reads similarity.json through this module alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UPDATES = ("gd", "lcgd")  # the FT updates, each compared with ICL
RANDOM = {u: f"random_{u}" for u in UPDATES}  # each update's norm-matched random control
LAYER_METRICS = ("simaou", "simaou_norm", "simam", "simam_delta")
KEY_SETS = ("query", "instruction+query")  # SimAM's keys: the reference's, or iclft's old set
MODELS = ("trained", "untrained")

#: setting -> column heading of the controls table, in column order
COLUMNS = {
    "gd": "GD",
    "lcgd": "layer-causal GD",
    "random_gd": "random (GD norms)",
    "random_lcgd": "random (LCGD norms)",
    "dai_uniform": "Dai uniform",
    "zsl": "ZSL",
}
METRIC_NAMES = {
    "simaou": "SimAOU",
    "simaou_norm": "SimAOU_norm",
    "simam": "SimAM",
    "simam_delta": "SimAM_Δ",
    "rec2ftp": "Rec2FTP",
}


def cell(st: Mapping[str, Any] | None) -> str:
    """``value [ci_low, ci_high]``, with ``± sd`` over draws for a random control."""
    if not isinstance(st, Mapping) or not isinstance(st.get("value"), (int, float)):
        return "–"
    out = f"{st['value']:.3f}"
    lo, hi = st.get("ci_low"), st.get("ci_high")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        out += f" [{lo:.3f}, {hi:.3f}]"
    if isinstance(st.get("sd"), (int, float)):
        out += f" ±{st['sd']:.3f} sd/{len(st.get('draws') or [])}"
    return out


def controls_rows(report: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(columns, rows) of the controls table: one row per (model, metric), one column per
    setting (GD, layer-causal GD, their random controls, Dai's uniform baseline, ZSL)."""
    metrics = report.get("metrics") or {}
    columns = ("model", "metric", *COLUMNS.values())
    rows = []
    for mname in MODELS:
        per_metric = metrics.get(mname)
        if not isinstance(per_metric, Mapping):
            continue
        for key, label in METRIC_NAMES.items():
            per_setting = per_metric.get(key)
            if isinstance(per_setting, Mapping):
                rows.append((mname, label, *(cell(per_setting.get(s)) for s in COLUMNS)))
    return columns, rows
