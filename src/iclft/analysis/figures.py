"""Figures of patching effects (matplotlib's Agg canvas: no display, no global backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from iclft.analysis.anatomy import parse_component
from iclft.store import atomic_writer


def effect_grid(
    effects: Mapping[str, float], n_layers: int, n_heads: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(heads [layers, heads], mlp [layers])`` arrays of effects (NaN where absent)."""
    heads = np.full((n_layers, n_heads), np.nan)
    mlp = np.full(n_layers, np.nan)
    for name, value in effects.items():
        c = parse_component(name)
        if c.kind == "head":
            heads[c.layer, c.head] = value
        elif c.kind == "mlp":
            mlp[c.layer] = value
    return heads, mlp


def plot_effect_heatmap(
    effects: Mapping[str, float], n_layers: int, n_heads: int, title: str, path: Path
) -> Path:
    """A layer x head heat map of normalised effects with the MLPs as an extra column,
    on a symmetric diverging scale; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heads, mlp = effect_grid(effects, n_layers, n_heads)
    vmax = float(np.nanmax(np.abs(np.concatenate([heads.ravel(), mlp])))) if effects else 1.0
    vmax = vmax if np.isfinite(vmax) and vmax > 0 else 1.0
    fig = Figure(figsize=(2.5 + 0.35 * n_heads, 1.5 + 0.22 * n_layers))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, 3, width_ratios=[n_heads, 1, 0.4], wspace=0.15)
    ax, ax_mlp, cax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1]), fig.add_subplot(gs[2])
    kw = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", origin="lower")
    im = ax.imshow(heads, **kw)
    ax_mlp.imshow(mlp[:, None], **kw)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    ax_mlp.set_xticks([0], ["MLP"])
    ax_mlp.set_yticks([])
    fig.colorbar(im, cax=cax, label="normalised effect")
    with atomic_writer(Path(path), "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return Path(path)
