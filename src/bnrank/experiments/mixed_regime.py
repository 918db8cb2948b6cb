"""Lazy, balanced and mixed dynamics of two-layer linear networks: a phase diagram over init
variance and width (Tu, Aranguri & Jacot 2024).

    bnrank reproduce mixed-regime [--preset quick|paper] [--out DIR]

A = W₂W₁ with W₁ (w × d), W₂ (d × w) of i.i.d. N(0, σ²) entries, σ² = d^{γ_σ²}, w = d^{γ_w}
(rounded, at least 1), trained by full-batch GD on ‖A − (A* + E)‖_F² / d² with a planted rank-k
A* = U Vᵀ (U, V of N(0, k^{−1/2}) entries, so A* has entries of variance 1) and noise E of
N(0, noise²) entries. Each run is measured at the step where the test error ‖A − A*‖_F² /
‖A*‖_F² is smallest (early stopping, recorded every `every` steps):

    test_error   that smallest test error
    rank         # singular values of A above 1/5 of its largest one
    distance     ‖θ(t*) − θ(0)‖ / ‖θ(0)‖, how far the parameters travelled (lazy: ≪ 1)
    best_step    t*

The step is lr = c / h with h = 2(‖W₁(0)‖²_op + ‖W₂(0)‖²_op + 2 s_1(A* + E)) / d², an upper
estimate of the top curvature. The figure draws each measure as a heat map over (γ_σ², γ_w)
with three reference lines of the paper's phase diagram: γ_σ² + γ_w = 1 (σ²w = d, lazy above,
active below), γ_σ² = −γ_w / 2 and w = k (γ_w = log k / log d, too narrow below). Runs with the
same width train together, one member per σ².
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from rich.console import Console

from bnrank.atomic import staged_dir
from bnrank.errors import ConfigError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, write_outputs
from bnrank.experiments.dln import device_option

LAZY_RULE = "lazy side: γ_σ² + γ_w > 1 (σ²·w > d); active side: γ_σ² + γ_w < 1"


@dataclass(frozen=True)
class Preset:
    """d × d target of rank k with noise std `noise`; the grid γ_σ² × γ_w; `steps` GD steps at
    lr = lr_factor / h, test error recorded every `every` steps; `seed` draws A*, E and the inits."""

    d: int = 20
    k: int = 3
    noise: float = 1.0
    gamma_sigma: tuple[float, ...] = (-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5)
    gamma_w: tuple[float, ...] = (0.6, 0.9, 1.2, 1.5, 1.8, 2.1)
    steps: int = 3000
    every: int = 10
    lr_factor: float = 1.0
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"


PRESETS: dict[str, Preset] = {
    "tiny": Preset(d=8, k=2, gamma_sigma=(-2.0, 0.0), gamma_w=(0.8, 1.6), steps=300),
    "quick": Preset(lr_factor=0.5),
    "paper": Preset(d=200, k=5, gamma_sigma=tuple(np.round(np.linspace(-2.2, -0.8, 15), 3)),
                    gamma_w=tuple(np.round(np.linspace(1.75, 2.8, 12), 3)), steps=20000, threads=None),
}
HIDDEN_PRESETS = {"tiny"}


def _train(w1: torch.Tensor, w2: torch.Tensor, y: torch.Tensor, a_star: torch.Tensor, lr: torch.Tensor, steps: int, every: int):
    """GD on ‖W₂W₁ − Y‖² / d² for stacked members w1 (E, w, d), w2 (E, d, w), lr (E,); returns
    per member the best test error, rank, distance and step (arrays of length E) and whether it
    diverged (its loss turned non-finite; its measures are then NaN)."""
    d = y.shape[0]
    start = torch.cat([w1.flatten(1), w2.flatten(1)], 1)
    scale = start.norm(dim=1)
    norm_star = a_star.square().sum()
    best = torch.full((w1.shape[0],), float("inf"), dtype=y.dtype)
    rank = torch.zeros(w1.shape[0], dtype=torch.long)
    dist = torch.zeros(w1.shape[0], dtype=y.dtype)
    best_step = torch.zeros(w1.shape[0], dtype=torch.long)
    diverged = torch.zeros(w1.shape[0], dtype=torch.bool)
    for step in range(steps + 1):
        a = torch.bmm(w2, w1)
        diverged |= ~torch.isfinite(a).all(2).all(1)
        if step % every == 0:
            err = (a - a_star).square().sum((1, 2)) / norm_star
            better = err < best
            if better.any():
                sv = torch.linalg.svdvals(a)
                rank = torch.where(better, (sv > sv[:, :1] / 5).sum(1), rank)
                moved = (torch.cat([w1.flatten(1), w2.flatten(1)], 1) - start).norm(dim=1) / scale
                dist = torch.where(better, moved, dist)
                best_step = torch.where(better, torch.full_like(best_step, step), best_step)
                best = torch.minimum(best, err)
        if step == steps:
            break
        r = torch.where(diverged[:, None, None], 0.0, 2 * (a - y) / d**2)
        g1, g2 = torch.bmm(w2.transpose(1, 2), r), torch.bmm(r, w1.transpose(1, 2))
        w1 = w1 - lr[:, None, None] * g1
        w2 = w2 - lr[:, None, None] * g2
    nan = torch.tensor(float("nan"), dtype=y.dtype)
    return (torch.where(diverged, nan, best).numpy(), rank.numpy(), torch.where(diverged, nan, dist).numpy(), best_step.numpy(),
            diverged.numpy())


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), **options) -> dict:
    """Train every (γ_σ², γ_w) of `preset`, draw the phase diagram; `options` replace Preset fields.

    Returns the summary written to ``summary.json``: preset, spec, lazy_rule, diverged_runs
    (left out of the regions and drawn blank); per region (lazy, active: LAZY_RULE) the median test error, rank and distance; checks: lazy_moves_less (the
    median distance travelled is smaller on the lazy side), active_has_lower_rank (the median
    rank is lower on the active side), active_rank_near_k (the active side's median rank is
    within 1 of k); passed; wall_time_s.
    """
    spec = device_option("mixed-regime", resolve_preset("mixed-regime", PRESETS, preset, options, hidden=HIDDEN_PRESETS), overrides)
    if not 0 < spec.k <= spec.d:
        raise ConfigError(f"mixed-regime: k must be in 1..d, got k = {spec.k}, d = {spec.d}")
    gen = torch.Generator().manual_seed(spec.seed)
    d, k = spec.d, spec.k
    u = torch.randn(d, k, generator=gen, dtype=torch.float64) * k**-0.25
    v = torch.randn(d, k, generator=gen, dtype=torch.float64) * k**-0.25
    a_star = u @ v.T
    y = a_star + spec.noise * torch.randn(d, d, generator=gen, dtype=torch.float64)
    s_y = float(torch.linalg.matrix_norm(y, ord=2))
    start = time.perf_counter()
    before = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    rows = []
    try:
        for gw in spec.gamma_w:
            width = max(1, int(round(d**gw)))
            sig = torch.tensor([d ** (gs / 2) for gs in spec.gamma_sigma], dtype=torch.float64)
            w1 = torch.randn(len(sig), width, d, generator=gen, dtype=torch.float64) * sig[:, None, None]
            w2 = torch.randn(len(sig), d, width, generator=gen, dtype=torch.float64) * sig[:, None, None]
            op = torch.linalg.matrix_norm(w1, ord=2) ** 2 + torch.linalg.matrix_norm(w2, ord=2) ** 2
            lr = spec.lr_factor * d**2 / (2 * (op + 2 * s_y))
            dev = torch.device(spec.device)
            best, rank, dist, step, diverged = _train(w1.to(dev), w2.to(dev), y.to(dev), a_star.to(dev), lr.to(dev), spec.steps, spec.every)
            for i, gs in enumerate(spec.gamma_sigma):
                rows.append({"gamma_sigma_sq": gs, "gamma_w": gw, "width": width, "sigma_sq": d**gs, "lr": float(lr[i]),
                             "test_error": float(best[i]), "rank": int(rank[i]), "distance": float(dist[i]), "best_step": int(step[i]),
                             "diverged": bool(diverged[i]), "lazy_side": gs + gw > 1})
    finally:
        torch.set_num_threads(before)
    df = pd.DataFrame(rows)
    ok = df[~df.diverged]
    regions = {name: {"runs": int(len(g)), "median_test_error": float(g.test_error.median()), "median_rank": float(g["rank"].median()),
                      "median_distance": float(g.distance.median())}
               for name, g in (("lazy", ok[ok.lazy_side]), ("active", ok[~ok.lazy_side]))}
    if min(r["runs"] for r in regions.values()) == 0:
        raise ConfigError("mixed-regime: the grid must have points on both sides of γ_σ² + γ_w = 1")
    checks = {
        "lazy_moves_less": regions["lazy"]["median_distance"] < regions["active"]["median_distance"],
        "active_has_lower_rank": regions["active"]["median_rank"] < regions["lazy"]["median_rank"],
        "active_rank_near_k": abs(regions["active"]["median_rank"] - k) <= 1,
    }
    summary = {"preset": preset, "spec": dict(spec.__dict__), "lazy_rule": LAZY_RULE, "s1_target": s_y,
               "s_planted": torch.linalg.svdvals(a_star)[:k].tolist(), "diverged_runs": int(df.diverged.sum()), "regions": regions, "checks": checks,
               "passed": all(checks.values()), "wall_time_s": time.perf_counter() - start}
    fig = _plot(df, spec)
    out = Path(out)
    with staged_dir(out, overwrite=True) as stage:
        write_outputs(stage, summary, {"phase_diagram": fig}, {"runs": df})
    _print(summary, out)
    return summary


def _plot(df: pd.DataFrame, spec: Preset) -> Figure:
    fig = Figure(figsize=(16, 3.8), layout="constrained")
    axes = fig.subplots(1, 4)
    gs, gw = np.array(spec.gamma_sigma), np.array(spec.gamma_w)
    titles = {"test_error": "best test error (relative)", "rank": "rank of A at the best step",
              "distance": "‖θ − θ(0)‖ / ‖θ(0)‖", "best_step": "best step"}
    for ax, (col, title) in zip(axes, titles.items()):
        grid = df.assign(**{col: df[col].where(~df.diverged)}).pivot_table(
            index="gamma_w", columns="gamma_sigma_sq", values=col, dropna=False).reindex(index=gw, columns=gs).to_numpy(float)
        values = np.log10(np.where(grid > 0, grid, np.nan)) if col in ("test_error", "distance") else grid
        mesh = ax.pcolormesh(gs, gw, values, shading="nearest", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label=("log10 " if col in ("test_error", "distance") else "") + col)
        line = np.linspace(gs.min(), gs.max(), 2)
        ax.plot(line, 1 - line, "k-", label="γ_σ² + γ_w = 1")
        ax.plot(line, -2 * line, "r-", label="γ_σ² = −γ_w/2")
        ax.axhline(math.log(spec.k) / math.log(spec.d), color="orange", label="w = k")
        ax.set_xlim(gs.min() - 0.25, gs.max() + 0.25)
        ax.set_ylim(gw.min() - 0.15, gw.max() + 0.15)
        ax.set_xlabel("γ_σ²")
        ax.set_ylabel("γ_w")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=6, loc="lower left")
    return fig


def _print(summary: dict, out: Path) -> None:
    console = Console()
    console.print(f"mixed-regime ({summary['preset']}): d = {summary['spec']['d']}, k = {summary['spec']['k']}, in {out}")
    for name, r in summary["regions"].items():
        console.print(f"  {name}: {r['runs']} runs, median test error {r['median_test_error']:.3f}, rank {r['median_rank']:g}, "
                      f"distance {r['median_distance']:.3g}")
    console.print(f"  {summary['diverged_runs']} runs diverged; time {summary['wall_time_s']:.0f} s")
    print_checks(console, summary["checks"])
