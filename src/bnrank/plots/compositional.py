"""Figures of the compositional-scaling experiment: test error against N, and the fitted rates.

Each function takes DataFrames and returns a matplotlib Figure (no pyplot state).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from bnrank.measure.scaling import PowerLawFit

COLORS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]


def _pair_label(nu_g: float, nu_h: float) -> str:
    return f"ν_g = {nu_g:g}, ν_h = {nu_h:g}"


def plot_scaling(selected: pd.DataFrame, exponents: pd.DataFrame, methods: list[str]):
    """One panel per (ν_g, ν_h): the selected test error of every (N, seed) against N (log-log),
    its mean over seeds per N, and the fitted power law e^a·N^b of each method (legend: rate
    −b ± its standard error). selected: columns nu_g, nu_h, n, seed, method, test_error;
    exponents: nu_g, nu_h, method, a, b, b_stderr (NaN where not fitted)."""
    pairs = sorted(set(zip(selected["nu_g"], selected["nu_h"])))
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (nu_g, nu_h) in zip(axes.flat, pairs):
        here = selected[(selected["nu_g"] == nu_g) & (selected["nu_h"] == nu_h)]
        for color, method in zip(COLORS, methods):
            rows_m = here[here["method"] == method]
            if rows_m.empty:
                continue
            ax.scatter(rows_m["n"], rows_m["test_error"], s=10, color=color, alpha=0.45, linewidths=0)
            mean = rows_m.groupby("n")["test_error"].mean()
            fit = exponents[(exponents["nu_g"] == nu_g) & (exponents["nu_h"] == nu_h) & (exponents["method"] == method)]
            label = method
            if not fit.empty and np.isfinite(fit["b"].iloc[0]):
                f = fit.iloc[0]
                label = f"{method}: rate {-f['b']:.2f} ± {f['b_stderr']:.2f}"
                grid = np.geomspace(mean.index.min(), mean.index.max(), 50)
                ax.plot(grid, PowerLawFit(f["a"], f["b"], 0.0, 0.0, 0).predict(grid), color=color, linestyle="--", linewidth=1)
            ax.plot(mean.index, mean.to_numpy(), color=color, marker="o", markersize=3, linewidth=1.2, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted(here["n"].unique())
        ax.set_xticks(sizes, [str(int(n)) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(_pair_label(nu_g, nu_h), fontsize=10)
        ax.set_xlabel("N (training points)")
        ax.set_ylabel("test error (mean sq., y standardized)")
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(True, which="both", alpha=0.25)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle("Test error against N: error ≈ e^a·N^(−rate), dashed: least-squares fit over seeds", fontsize=11)
    return fig


def plot_rates(exponents: pd.DataFrame, predicted: pd.DataFrame, methods: list[str]):
    """Measured rate (−b ± 2 standard errors) of each method per (ν_g, ν_h), and the predicted
    deep and shallow rates (predicted: nu_g, nu_h, deep_rate, shallow_rate)."""
    predicted = predicted.sort_values(["nu_h", "nu_g"], ignore_index=True)
    pairs = list(zip(predicted["nu_g"], predicted["nu_h"]))
    fig = Figure(figsize=(max(5.0, 1.3 * len(pairs) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(pairs))
    width = 0.8 / max(1, len(methods))
    for k, (color, method) in enumerate(zip(COLORS, methods)):
        rates, errs = [], []
        for nu_g, nu_h in pairs:
            f = exponents[(exponents["nu_g"] == nu_g) & (exponents["nu_h"] == nu_h) & (exponents["method"] == method)]
            rates.append(-f["b"].iloc[0] if not f.empty else np.nan)
            errs.append(2 * f["b_stderr"].iloc[0] if not f.empty else np.nan)
        ax.errorbar(x + (k - (len(methods) - 1) / 2) * width, rates, yerr=errs, fmt="o", color=color, capsize=3, label=method)
    ax.scatter(x, predicted["deep_rate"], marker="_", s=600, color="black", label="predicted, deep")
    ax.scatter(x, predicted["shallow_rate"], marker="_", s=600, color="gray", label="predicted, shallow")
    ax.set_xticks(x, [f"{g:g}, {h:g}" for g, h in pairs])
    ax.set_xlabel("(ν_g, ν_h)")
    ax.set_ylabel("rate = −d log(test error) / d log N")
    ax.set_title("Fitted scaling rates (±2 standard errors) and the theory's rates", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.25)
    return fig
