"""Figures of patching effects (matplotlib's Agg canvas: no display, no global backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from iclft.models.anatomy import COMPONENT_KINDS, parse_component
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
    """A layer x head heat map of normalised effects with the MLPs as an extra column, each on
    its own symmetric diverging scale (an MLP near 1, such as the first layer's, would wash the
    heads out); residual streams are not drawn (patched at every query position they restore
    the clean run by definition). Written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heads, mlp = effect_grid(effects, n_layers, n_heads)

    def vmax(x: np.ndarray) -> float:
        v = float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 1.0
        return v if v > 0 else 1.0

    fig = Figure(figsize=(3.2 + 0.35 * n_heads, 1.5 + 0.22 * n_layers))
    FigureCanvasAgg(fig)
    # heads, their colour bar, a gap for its label, the MLP column, its colour bar
    gs = fig.add_gridspec(1, 5, width_ratios=[n_heads, 0.3, 1.2, 1, 0.3], wspace=0.15)
    ax, cax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    ax_mlp, cax_mlp = fig.add_subplot(gs[3]), fig.add_subplot(gs[4])
    kw = dict(cmap="RdBu_r", aspect="auto", origin="lower")
    im = ax.imshow(heads, vmin=-vmax(heads), vmax=vmax(heads), **kw)
    im_mlp = ax_mlp.imshow(mlp[:, None], vmin=-vmax(mlp), vmax=vmax(mlp), **kw)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    ax_mlp.set_xticks([0], ["MLP"])
    ax_mlp.set_yticks([])
    fig.colorbar(im, cax=cax, label="heads: normalised effect")
    fig.colorbar(im_mlp, cax=cax_mlp, label="MLPs")
    with atomic_writer(Path(path), "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def plot_position_heatmap(
    effects: Mapping[str, Sequence[float | None]],
    offsets: Sequence[int],
    labels: Sequence[str],
    title: str,
    path: Path,
) -> Path:
    """Per-position effects: one panel per component kind (residual stream, MLP), layer x
    position (offsets from the last prompt token, labelled with a pair's tokens), on a
    symmetric diverging scale; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds: dict[str, dict[int, Sequence[float | None]]] = {}
    for name, row in effects.items():
        c = parse_component(name)
        kinds.setdefault(c.kind, {})[c.layer] = row
    order = [k for k in reversed(COMPONENT_KINDS) if k in kinds]  # resid, mlp, attn, head
    n_layers = 1 + max((layer for k in kinds.values() for layer in k), default=0)
    width = 1.0 + (1.6 + 0.5 * len(offsets)) * len(order)
    fig = Figure(figsize=(width, 1.6 + 0.2 * n_layers))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(order), i + 1) for i in range(len(order))]
    fig.subplots_adjust(wspace=0.5)
    for i, (ax, kind) in enumerate(zip(axes, order)):
        grid = np.full((n_layers, len(offsets)), np.nan)
        for layer, row in kinds[kind].items():
            grid[layer] = [np.nan if v is None else v for v in row]
        vmax = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        vmax = vmax if vmax > 0 else 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", origin="lower")
        ax.set_xticks(range(len(offsets)), [f"{o}\n{t}" for o, t in zip(offsets, labels)])
        ax.tick_params(axis="x", labelsize=7)
        if i == 0:
            ax.set_ylabel("layer")
        ax.set_title(f"{kind.upper()} per position", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
    fig.supxlabel("offset from the last prompt token (tokens of the first pair)", fontsize=8)
    fig.suptitle(title + " · normalised effect", fontsize=9)
    with atomic_writer(Path(path), "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return Path(path)
