"""Weight spectra across layers (the paper's Figure 1b): singular values of every W_ℓ against ℓ."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bnrank.errors import DataError


def plot_weight_spectra(layers: pd.DataFrame, threshold: float | None = 0.1, title: str | None = None) -> Figure:
    """Scatter of the singular values of each W_ℓ (y, log scale) against the layer ℓ (x).

    layers: `Analysis.layers` (columns member, layer, singular_values). One color per member,
    members side by side within a layer; zero singular values are not drawn (log scale); a
    dashed line marks `threshold` (None: no line). Returns a Figure (no pyplot state).
    """
    missing = {"member", "layer", "singular_values"} - set(layers.columns)
    if missing:
        raise DataError(f"plot_weight_spectra: layers table lacks column(s) {', '.join(sorted(missing))}")
    long = layers[["member", "layer", "singular_values"]].explode("singular_values", ignore_index=True)
    long["singular_values"] = long["singular_values"].astype(float)
    long = long[long["singular_values"] > 0]
    members = sorted(layers["member"].unique())
    offsets = np.linspace(-0.3, 0.3, len(members)) if len(members) > 1 else np.zeros(1)
    colors = _member_colors(len(members))
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for member, offset, color in zip(members, offsets, colors):
        pts = long[long["member"] == member]
        ax.scatter(pts["layer"] + offset, pts["singular_values"], s=8, color=color, alpha=0.8, linewidths=0, label=f"member {member}")
    if threshold is not None:
        ax.axhline(threshold, color="0.4", linestyle="--", linewidth=0.8, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("layer ℓ")
    ax.set_ylabel("singular values of $W_\\ell$")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title or f"Weight spectra ({len(members)} member{'s' if len(members) > 1 else ''})")
    if len(members) <= 10:
        ax.legend(fontsize="small", loc="best")
    return fig


def _member_colors(n: int) -> list:
    """tab10 for up to 10 members, else evenly spaced viridis."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](t) for t in np.linspace(0, 1, n)]
