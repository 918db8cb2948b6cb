"""Leaky ResNet figures: the jump profile, −(2/L̃)H along the layers, the representation
spectra, and uniform vs adaptive layer steps.

Each function takes the tables of `bnrank.measure.leaky.leaky_measurements` with the columns
`variant` ("uniform" / "adaptive") and `effective_depth` added, and returns a matplotlib Figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure


def _colors(values) -> dict:
    values = sorted(set(values))
    return {v: colormaps["viridis"](t) for v, t in zip(values, np.linspace(0, 0.85, len(values)))}


def plot_jumps(layers: pd.DataFrame, member: int = 0) -> Figure:
    """Relative jump ‖A_ℓ − A_{ℓ-1}‖/‖A_ℓ‖ against the layer position p_ℓ, one curve per L̃
    (uniform steps, `member`), log scale."""
    rows = layers[(layers.variant == "uniform") & (layers.member == member) & (layers.layer > 0)]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = _colors(rows.effective_depth)
    for lt, grp in rows.groupby("effective_depth"):
        ax.plot(grp.p, grp.jump, "-o", markersize=3, color=colors[lt], label=f"L̃ = {lt:g}")
    ax.set(xlabel="layer position p", ylabel="relative jump ‖A_ℓ − A_{ℓ−1}‖ / ‖A_ℓ‖", yscale="log",
           title="Jump profile (uniform steps)")
    ax.legend()
    return fig


def plot_hamiltonian(layers: pd.DataFrame, network: pd.DataFrame, k_star: int, member: int = 0) -> Figure:
    """Left: −(2/L̃)H_ℓ against p_ℓ per L̃ (uniform steps, `member`) with k*; right: the layer-mean
    −(2/L̃)H of every member against L̃, and the bottleneck rank."""
    rows = layers[(layers.variant == "uniform") & (layers.member == member) & (layers.layer > 0)]
    nets = network[(network.variant == "uniform") & (network.effective_depth > 0)]
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors = _colors(rows.effective_depth)
    for lt, grp in rows[rows.effective_depth > 0].groupby("effective_depth"):
        left.plot(grp.p, grp.neg2h, "-o", markersize=3, color=colors[lt], label=f"L̃ = {lt:g}")
    left.axhline(k_star, color="k", linestyle="--", linewidth=1, label=f"k* = {k_star}")
    left.set(xlabel="layer position p", ylabel="−(2/L̃)·H", title="Hamiltonian along the layers")
    left.legend()
    right.plot(nets.effective_depth, nets.neg2h, "o", label="−(2/L̃)·H (layer mean)")
    right.plot(nets.effective_depth, nets.bottleneck_rank, "x", color="C1", label="bottleneck rank (min over layers)")
    right.axhline(k_star, color="k", linestyle="--", linewidth=1, label=f"k* = {k_star}")
    right.set(xlabel="effective depth L̃", ylabel="value", xscale="log", title="−(2/L̃)H vs k*")
    right.legend()
    return fig


def plot_representation_spectra(layers: pd.DataFrame, effective_depth: float, member: int = 0, top: int = 8) -> Figure:
    """The `top` largest singular values of A_ℓ (each divided by the layer's largest) against
    p_ℓ, uniform steps at one L̃."""
    rows = layers[(layers.variant == "uniform") & (layers.member == member) & (layers.effective_depth == effective_depth)]
    sv = np.stack([np.asarray(s, dtype=float)[:top] / max(float(s[0]), 1e-300) for s in rows.singular_values])
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i in range(sv.shape[1]):
        ax.plot(rows.p, sv[:, i], "-o", markersize=3, color=colormaps["viridis"](i / max(top - 1, 1)), label=f"s_{i + 1}")
    ax.set(xlabel="layer position p", ylabel="s_i(A_ℓ) / s_1(A_ℓ)", yscale="log",
           title=f"Representation spectra, L̃ = {effective_depth:g}")
    ax.legend(ncol=2)
    return fig


def plot_adaptive(layers: pd.DataFrame, metrics: pd.DataFrame, effective_depth: float) -> Figure:
    """Uniform vs adaptive steps at one L̃: left, the relative jumps against ℓ (every member);
    middle, the final steps ρ_ℓ; right, the mean objective against the training step."""
    rows = layers[(layers.effective_depth == effective_depth) & (layers.layer > 0)]
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    jumps, steps, curves = fig.subplots(1, 3)
    for color, (variant, grp) in zip(("C0", "C3"), rows.groupby("variant", sort=False)):
        for e, m in grp.groupby("member"):
            jumps.plot(m.layer, m.jump, "-o", markersize=3, color=color, label=variant if e == 0 else None)
            steps.plot(m.layer, m.rho, "-o", markersize=3, color=color, label=variant if e == 0 else None)
    jumps.set(xlabel="layer ℓ", ylabel="relative jump", yscale="log", title=f"Jumps, L̃ = {effective_depth:g}")
    steps.set(xlabel="layer ℓ", ylabel="ρ_ℓ", title="Layer steps")
    for ax in (jumps, steps):
        ax.legend()
    runs = metrics[metrics.effective_depth == effective_depth]
    for color, (variant, grp) in zip(("C0", "C3"), runs.groupby("variant", sort=False)):
        mean = grp.groupby("step").objective.mean()
        curves.plot(mean.index, mean.to_numpy(), color=color, label=variant)
    curves.set(xlabel="training step", ylabel="objective (member mean)", yscale="log", title="Training")
    curves.legend()
    return fig
