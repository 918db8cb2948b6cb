"""The predecessor paper's rank-recovery figure (ICLR 2023): per-layer activation spectra and
nonlinearity impact (the weight spectra are `bnrank.plots.spectra.plot_weight_spectra`).

Each function takes an `Analysis.layers` DataFrame and returns a matplotlib Figure (no pyplot state).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bnrank.errors import DataError


def _check(layers: pd.DataFrame, columns: set[str], who: str) -> None:
    missing = columns - set(layers.columns)
    if missing:
        raise DataError(f"{who}: layers table lacks column(s) {', '.join(sorted(missing))}")


def plot_activation_spectra(layers: pd.DataFrame, member: int = 0, top: int = 12) -> Figure:
    """The `top` largest singular values of σ(α_ℓ(X)) (α_L(X) for ℓ = L) against ℓ, each divided
    by the layer's largest, on a log scale; curve i links the i-th singular values across layers.

    layers: `Analysis.layers` (columns member, layer, act_singular_values); only `member` is drawn.
    """
    _check(layers, {"member", "layer", "act_singular_values"}, "plot_activation_spectra")
    rows = layers[layers["member"] == member].sort_values("layer")
    ell = rows["layer"].to_numpy()
    k = min(top, min(len(s) for s in rows["act_singular_values"]))
    sv = np.stack([np.asarray(s, dtype=float)[:k] / max(float(s[0]), 1e-300) for s in rows["act_singular_values"]])
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = [colormaps["viridis"](t) for t in np.linspace(0, 0.9, k)]
    for i in range(k):
        ax.plot(ell, np.where(sv[:, i] > 0, sv[:, i], np.nan), "-o", color=colors[i], markersize=3, linewidth=1,
                label=f"$s_{{{i + 1}}}$" if i < 6 else None)
    ax.set_yscale("log")
    ax.set_xlabel("layer ℓ")
    ax.set_ylabel("singular values of $\\sigma(\\alpha_\\ell(X))$ / largest")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Activation spectra (top {k})")
    ax.legend(fontsize="small", loc="lower left", ncols=2)
    return fig


def plot_nonlinearity_impact(layers: pd.DataFrame) -> Figure:
    """‖σ(α_ℓ) − α_ℓ‖_F / ‖α_ℓ‖_F against the hidden layer ℓ, one line per member (near 0 where
    the ReLU acts as the identity, i.e. in the bottleneck).

    layers: `Analysis.layers` (columns member, layer, nonlin_impact; NaN at ℓ = L is skipped).
    """
    _check(layers, {"member", "layer", "nonlin_impact"}, "plot_nonlinearity_impact")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    members = sorted(layers["member"].unique())
    for member in members:
        rows = layers[(layers["member"] == member) & layers["nonlin_impact"].notna()].sort_values("layer")
        ax.plot(rows["layer"], rows["nonlin_impact"], "-o", markersize=4, label=f"member {member}")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("layer ℓ")
    ax.set_ylabel("$\\|\\sigma(\\alpha_\\ell) - \\alpha_\\ell\\| / \\|\\alpha_\\ell\\|$")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Nonlinearity impact per layer")
    if len(members) > 1:
        ax.legend(fontsize="small")
    return fig
