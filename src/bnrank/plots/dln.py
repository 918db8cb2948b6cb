"""Figures of the deep-linear-network experiments (saddle-to-saddle, l2-linear); plain arrays in,
a matplotlib Figure out (no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure


def plot_loss_curves(curves: Mapping[int, Sequence[tuple[float, np.ndarray, np.ndarray, Sequence[float]]]]) -> Figure:
    """One panel per depth: loss against time (log-log) for each init scale α, with its learning
    times t_k marked. curves[depth] = [(α, times, loss, t_ks), ...]."""
    fig = Figure(figsize=(4.2 * len(curves), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(curves)))
    for ax, (depth, runs) in zip(axes, curves.items()):
        colors = [colormaps["viridis"](t) for t in np.linspace(0, 0.9, len(runs))]
        for (alpha, t, loss, tks), color in zip(runs, colors):
            keep = (t > 0) & (loss > 0)
            ax.loglog(t[keep], loss[keep], color=color, label=f"α = {alpha:g}")
            for tk in tks:
                if np.isfinite(tk):
                    ax.plot(tk, np.interp(np.log(tk), np.log(t[keep]), loss[keep]), "o", color=color, markersize=4)
        ax.set_xlabel("time t = lr · step")
        ax.set_ylabel("train loss")
        ax.set_ylim(bottom=max(1e-8, ax.get_ylim()[0]))
        ax.set_title(f"depth {depth}: loss plateaus (dots: s_k(A) = s*_k / 2)")
        ax.legend(fontsize=7)
    return fig


def plot_singular_values(panels: Mapping[int, tuple[float, np.ndarray, np.ndarray]], planted: Sequence[float]) -> Figure:
    """One panel per depth: the singular values of the learned matrix A against time (log axis),
    planted values dashed. panels[depth] = (α, times (T,), singular values (T, r))."""
    fig = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (depth, (alpha, t, sv)) in zip(axes, panels.items()):
        keep = t > 0
        colors = [colormaps["tab10"](i) for i in range(sv.shape[1])]
        for i in range(sv.shape[1]):
            ax.semilogx(t[keep], sv[keep, i], color=colors[i], label=f"s_{i + 1}(A)")
        for i, s in enumerate(planted):
            ax.axhline(s, color=colors[i], linestyle="--", linewidth=0.8)
        ax.set_xlabel("time t = lr · step")
        ax.set_ylabel("singular value")
        ax.set_title(f"depth {depth}, α = {alpha:g}: one singular value at a time")
        ax.legend(fontsize=7)
    return fig


def plot_time_scaling(points: Mapping[int, tuple[np.ndarray, np.ndarray, str]]) -> Figure:
    """Learning time t_k of each mode against the init scale α, one panel per depth.
    points[depth] = (alphas (A,), t (A, r) median over seeds, law text for the title)."""
    fig = Figure(figsize=(4.2 * len(points), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(points)))
    for ax, (depth, (alphas, t, law)) in zip(axes, points.items()):
        for k in range(t.shape[1]):
            ax.loglog(alphas, t[:, k], "o-", label=f"mode {k + 1}")
        ax.set_xlabel("init scale α")
        ax.set_ylabel("learning time t_k")
        ax.set_title(f"depth {depth}: {law}", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def plot_rank_traces(times: np.ndarray, ranks: np.ndarray, title: str) -> Figure:
    """Rank of the learned matrix over training for many runs (ranks (T, runs)), slightly jittered."""
    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.subplots()
    jitter = np.linspace(-0.15, 0.15, ranks.shape[1])
    for j in range(ranks.shape[1]):
        ax.step(times, ranks[:, j] + jitter[j], where="post", linewidth=0.8, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("rank of A")
    ax.set_title(title)
    return fig
