"""The names similarity.json is keyed by, and its controls table (CLI and report), without
torch: the report reads similarity.json through this module alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iclft.records import SimilarityResult

UPDATES = ("gd", "lcgd")  # the FT updates, each compared with ICL
RANDOM = {u: f"random_{u}" for u in UPDATES}  # each update's norm-matched random control
LAYER_METRICS = ("simaou", "simaou_norm", "simam", "simam_delta")
#: SimAM's keys: the reference's (the query's own tokens, from its first character), the query
#: with the separator tokens before it (iclft's earlier boundary), or instruction and query
KEY_SETS = ("reference", "query+separator", "instruction+query")
#: the metrics over attention scores, averaged over :func:`simam_layers` only
SIMAM_METRICS = ("simam", "simam_delta")
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


def controls_rows(report: SimilarityResult) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(columns, rows) of the controls table: one row per (model, metric), one column per
    setting (GD, layer-causal GD, their random controls, Dai's uniform baseline, ZSL)."""
    metrics = report.metrics
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


def extra_rows(report: SimilarityResult) -> list[tuple[str, str]]:
    """(quantity, value) rows beside the controls table: accuracy per setting, the size of Dai
    et al.'s f2t subset per update, what fp32 -> eval-dtype casting kept of each update, and
    the protocol lines on positions and keys."""
    rows = [(f"accuracy {s}", cell(st)) for s, st in report.accuracy.items()]
    for u, st in report.f2t.items():
        if isinstance(st, Mapping):
            rows.append((f"f2t queries ({u}: ZSL wrong, ICL and FT right)", str(st.get("n"))))
    for mname, per_update in (report.update_cast or {}).items():
        for u, c in per_update.items():
            rows.append((f"bf16/fp16 cast kept of the {mname} {u} update (cosine, norm ratio)",
                         f"{c.get('cosine')}, {c.get('norm_ratio')}"))  # fmt: skip
    protocol = report.protocol
    rows += [(k, str(protocol[k])) for k in ("position", "keys", "interval") if k in protocol]
    return rows
