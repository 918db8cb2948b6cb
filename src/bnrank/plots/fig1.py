"""The paper's Figure 1: ‖θ‖² against depth by rank class (a), weight spectra of a few trials (b).

Each function takes DataFrames and returns a matplotlib Figure (no pyplot state).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bnrank.errors import DataError


SPECTRUM_FLOOR = 1e-4
"""Panel (b) shows singular values down to this (the y axis' lower limit)."""


def rank_colors(ranks) -> dict[int, tuple]:
    """Distinct colors for the distinct `ranks`, ascending (tab10, then tab20 beyond 10 ranks);
    build it once from all networks so that a rank has one color in both panels."""
    ranks = sorted({int(k) for k in ranks})
    cmap = colormaps["tab10" if len(ranks) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(ranks)}


def plot_norm_vs_depth(runs: pd.DataFrame, fits: pd.DataFrame, cost_max: float = 0.1, colors: dict | None = None,
                       minima: pd.DataFrame | None = None) -> Figure:
    """Panel (a): ‖θ‖² at the end of training against depth, one point per network.

    runs: one row per network with columns depth, param_norm_sq, rank (its rank class) and mse
    (final train cost); the marker is '.' when mse < `cost_max`, else 'x'; the color is the rank.
    fits: `fit_depth_expansion` output (rank, slope, intercept): each rank class with a fit gets
    the line slope·L + intercept over the depths of its networks; where `fits` also has
    expansion_slope, expansion_intercept and r2_coef (`bnrank.experiments.fig1.fit_rank_classes`)
    the curve k·L + R⁽¹⁾ + R⁽²⁾/L is drawn dashed beside it. colors: rank → color (default
    `rank_colors` of the runs' ranks). minima: per-rank minima (`bnrank.measure.rank_minima.best_minima`:
    depth, rank_class, objective, param_norm_sq): each class's curve through its minima replaces
    the fit lines, solid between depths where the class has the lowest objective, dashed elsewhere.
    """
    missing = {"depth", "param_norm_sq", "rank", "mse"} - set(runs.columns)
    if missing:
        raise DataError(f"plot_norm_vs_depth: runs table lacks column(s) {', '.join(sorted(missing))}")
    colors = colors or rank_colors(runs["rank"])
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax = fig.subplots()
    for rank, group in runs.groupby("rank", sort=True):
        fitted = group["mse"] < cost_max
        for mask, marker, size in ((fitted, ".", 120), (~fitted, "x", 40)):
            pts = group[mask]
            ax.scatter(pts["depth"], pts["param_norm_sq"], marker=marker, s=size, color=colors[int(rank)], linewidths=1.2)
    shown = sorted(int(k) for k in runs["rank"].unique())
    handles = [Line2D([], [], color=colors[k], marker="o", linestyle="", label=f"rank {k}") for k in shown]
    if minima is not None:
        handles = _minima_curves(ax, minima, colors, handles, shown)
    for fit in fits.itertuples() if minima is None else ():
        if not np.isfinite(fit.slope) or int(fit.rank) not in shown:
            continue
        depths = runs.loc[runs["rank"] == fit.rank, "depth"]
        grid = np.array([depths.min(), depths.max()], dtype=float)
        ax.plot(grid, fit.slope * grid + fit.intercept, "-", color=colors[int(fit.rank)], linewidth=1, alpha=0.8)
        label = f"rank {int(fit.rank)}: slope {fit.slope:.2f}"
        if np.isfinite(getattr(fit, "expansion_slope", np.nan)):
            curve = np.linspace(grid[0], grid[1], 50)
            ax.plot(curve, fit.expansion_slope * curve + fit.expansion_intercept + fit.r2_coef / curve, "--",
                    color=colors[int(fit.rank)], linewidth=1, alpha=0.8)
            label += f", k {fit.expansion_slope:.2f} (dashed: + R⁽²⁾/L)"
        handles[shown.index(int(fit.rank))].set_label(label)
    handles += [
        Line2D([], [], color="0.3", marker=".", markersize=10, linestyle="", label=f"train cost < {cost_max:g}"),
        Line2D([], [], color="0.3", marker="x", linestyle="", label=f"train cost ≥ {cost_max:g}"),
    ]
    ax.legend(handles=handles, fontsize="small", loc="best")
    ax.set_xlabel("depth L")
    ax.set_ylabel("$\\|\\theta\\|^2$ at the end of training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Parameter norm against depth, colored by the rank of $W_{L/2}$")
    return fig


def _minima_curves(ax, minima: pd.DataFrame, colors: dict, handles: list, shown: list[int]) -> list:
    """Draw one curve per rank class through its minima (solid where lowest at both ends of a
    segment, dashed elsewhere); returns the legend handles with one per class."""
    lowest = minima.loc[minima.groupby("depth")["objective"].idxmin()].set_index("depth")["rank_class"]
    for k, group in minima.sort_values("depth").groupby("rank_class"):
        k = int(k)
        color = colors.get(k, "0.5")
        d, v = group["depth"].to_numpy(), group["param_norm_sq"].to_numpy()
        ax.scatter(d, v, marker="D", s=18, facecolors="none", edgecolors=[color])
        for i in range(len(d) - 1):
            solid = lowest.get(d[i]) == k and lowest.get(d[i + 1]) == k
            ax.plot(d[i:i + 2], v[i:i + 2], "-" if solid else "--", color=color, linewidth=1.2)
        if k not in shown:
            handles.append(Line2D([], [], color=color, marker="D", linestyle="", label=f"rank {k}"))
    handles.append(Line2D([], [], color="0.3", marker="D", markerfacecolor="none", linestyle="-",
                          label="best minimum per rank class (solid: lowest objective)"))
    return handles


def plot_trial_spectra(layers: pd.DataFrame, trials: pd.DataFrame, threshold: float | None = 0.1,
                       colors: dict | None = None) -> Figure:
    """Panel (b): singular values of every W_ℓ against ℓ for a few trials, one panel each.

    layers: one row per (cell_id, layer) with column singular_values (e.g. a sweep's layers
    table); trials: one row per trial to draw, in panel order, with columns cell_id, depth and
    rank; colors: rank → color (default `rank_colors` of the trials' ranks; pass panel (a)'s).
    The log y axis starts at SPECTRUM_FLOOR (smaller singular values, numerically zero, are out of
    view); a dashed line marks `threshold` (None: no line). Panels share the y axis.
    """
    missing = {"cell_id", "layer", "singular_values"} - set(layers.columns)
    if missing:
        raise DataError(f"plot_trial_spectra: layers table lacks column(s) {', '.join(sorted(missing))}")
    if trials.empty:
        raise DataError("plot_trial_spectra: no trials to draw")
    colors = colors or rank_colors(trials["rank"])
    fig = Figure(figsize=(3.2 * len(trials) + 0.6, 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(trials), sharey=True))
    for ax, trial in zip(axes, trials.itertuples()):
        rows = layers[layers["cell_id"] == trial.cell_id]
        ell = np.concatenate([np.full(len(s), layer) for layer, s in zip(rows["layer"], rows["singular_values"])])
        sv = np.concatenate([np.asarray(s, dtype=float) for s in rows["singular_values"]])
        keep = sv >= SPECTRUM_FLOOR
        ax.scatter(ell[keep], sv[keep], s=9, color=colors[int(trial.rank)], linewidths=0, alpha=0.8)
        if threshold is not None:
            ax.axhline(threshold, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("layer ℓ")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"L = {int(trial.depth)}, rank {int(trial.rank)}", fontsize="medium")
    axes[0].set_ylim(bottom=SPECTRUM_FLOOR)
    axes[0].set_ylabel("singular values of $W_\\ell$")
    return fig
