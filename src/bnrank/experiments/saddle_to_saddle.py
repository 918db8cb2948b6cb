"""Saddle-to-saddle dynamics of deep linear networks from small initialization (Jacot et al. 2021).

    bnrank reproduce saddle-to-saddle [--preset quick|paper] [--out DIR]

Plain GD (no penalty) on the linear-regression task (`bnrank.tasks.linear`) with a planted
A* of distinct singular values s*_1 > ... > s*_r and whitened inputs, so the loss is ‖A − A*‖_F²
(A = W_L ⋯ W_1, a linear net without biases, `bnrank.experiments.dln`). From a small init
(W_ℓ ~ N(0, α²/fan_in)) the loss shows plateaus, and the learned matrix gains one singular value
at each drop, the largest first. Along an aligned, balanced mode gradient flow is
ds/dt = 2L s^{2−2/L} (s* − s), which from s(0) = s_0 ∝ α^L reaches s*/2 at about

    t ≈ s_0^{−(1−2/L)} / (2L (1 − 2/L) s*)  ∝ α^{−(L−2)} / s*      (L ≥ 3)
    t ≈ log(s*/s_0) / (4 s*),  so dt/d log α = −1/(2 s*)           (L = 2)

(PREDICTION): the learning time of mode k scales as α^{−(L−2)} for L ≥ 3, as log(1/α) for L = 2.
Time is t = lr · step. Writes into `out` (staged, so `out` is whole or absent):

    trajectories.parquet   per (depth, α, seed, record): step, time, loss, singular values of A
    transitions.parquet    per (depth, α, seed, mode k): learning time t_k (s_k(A) ≥ s*_k/2)
    plateaus.parquet       per (depth, α, seed, plateau): its time span, loss level and rank of A
    loss.png/.svg          loss against time (log-log) per depth and α
    singular_values.png/.svg   s_i(A) against time (log time) at the smallest α
    scaling.png/.svg       t_k against α per depth
    summary.json           see `run`
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
from rich.console import Console

from bnrank.atomic import staged_dir
from bnrank.config import LinearRegressionTask
from bnrank.errors import ConfigError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, write_outputs
from bnrank.experiments.dln import device_option, log_steps, plateaus, rank_jumps, train_dln
from bnrank.models import EnsembleMLP
from bnrank.plots.dln import plot_loss_curves, plot_singular_values, plot_time_scaling
from bnrank.tasks import make_task

PREDICTION = (
    "learning time of mode k (s_k(A) reaches s*_k/2): t_k ∝ α^(−(L−2)) for L ≥ 3, so the slope of log t_k "
    "against log α is −(L−2); for L = 2, t_k ≈ log(s*_k/s_0)/(4 s*_k) with s_0 ∝ α², so dt_k/d log α = −1/(2 s*_k)"
)
RANK_RULE = "rank of A = # singular values ≥ half the smallest planted one"


@dataclass(frozen=True)
class Preset:
    """`depths` each trained for `times[i]` time units (t = lr · step) with lr = lr_factors[i] /
    (2L · s*_1^{2−2/L}) (the top curvature of the loss along an aligned mode at the end; a
    factor below 1 brings GD closer to gradient flow, which the L = 2 law needs);
    every (α, seed) of `alphas` × `seeds` is one member; square d × d task with n_train = 2d
    whitened inputs; `records` log-spaced records per run; plateaus: local log-log slope within
    ±slope_tol over ≥ min_decades; the scaling check holds when every fitted slope is within
    `scaling_tol` (relative) of the prediction."""

    depths: tuple[int, ...] = (2, 3, 4)
    times: tuple[float, ...] = (20.0, 1500.0, 1500.0)
    alphas: tuple[float, ...] = (0.003, 0.006, 0.012)
    depth_alphas: tuple[tuple[float, ...], ...] | None = None
    seeds: tuple[int, ...] = (0, 1)
    d: int = 5
    width: int = 5
    singular_values: tuple[float, ...] = (6.0, 2.0, 0.6667)
    lr_factors: tuple[float, ...] = (0.2, 1.0, 1.0)
    records: int = 200
    slope_tol: float = 0.25
    min_decades: float = 0.1
    scaling_tol: float = 0.2
    task_seed: int = 0
    threads: int | None = 1
    device: str = "cpu"


PRESETS: dict[str, Preset] = {
    "tiny": Preset(depths=(2, 3), times=(8.0, 60.0), depth_alphas=((1e-4, 1e-3), (0.03, 0.1)), seeds=(0,), d=3, width=3,
                   singular_values=(3.0, 1.0), records=60, lr_factors=(0.2, 1.0)),
    "quick": Preset(depths=(2, 3, 4), times=(14.0, 1000.0, 800.0),
                    depth_alphas=((1e-5, 1e-4, 1e-3), (0.006, 0.012, 0.024, 0.048), (0.05, 0.07, 0.1, 0.14)),
                    seeds=(0, 1, 2)),
    "paper": Preset(depths=(2, 3, 4, 5), times=(15.0, 6000.0, 6000.0, 6000.0), lr_factors=(0.2, 1.0, 1.0, 1.0), d=10, width=10,
                    singular_values=(10.0, 5.0, 2.5, 1.25, 0.625),
                    depth_alphas=((1e-4, 1e-3, 1e-2, 3e-2), (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2), (0.02, 0.03, 0.045, 0.07, 0.1),
                                  (0.08, 0.1, 0.13, 0.16, 0.2)),
                    seeds=tuple(range(8)), records=400, threads=None),
}
HIDDEN_PRESETS = {"tiny"}


def predicted_slope(depth: int, s_star: float) -> float:
    """Slope of log t_k against log α (L ≥ 3) or of t_k against log α (L = 2): see PREDICTION."""
    return -(depth - 2.0) if depth >= 3 else -1.0 / (2.0 * s_star)


def learning_times(times: np.ndarray, sv: np.ndarray, planted: Sequence[float]) -> list[float]:
    """First time each s_k(A) reaches s*_k/2 (NaN if never): sv (T, ≥ r) per record."""
    out = []
    for k, s in enumerate(planted):
        hit = np.nonzero(sv[:, k] >= s / 2)[0]
        out.append(float(times[hit[0]]) if hit.size else float("nan"))
    return out


def _median(values: Sequence[float]) -> float:
    """Median of a run group's learning times; NaN (not learned) if any run did not learn the mode."""
    v = np.asarray(values, dtype=float)
    return float(np.median(v)) if np.all(np.isfinite(v)) else float("nan")


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), **options) -> dict:
    """Train and measure every (depth, α, seed) of `preset`; `options` replace Preset fields.

    Returns the summary written to ``summary.json``: preset, spec fields, prediction
    (PREDICTION), rank_rule; per depth: lr, steps, and per mode k the fitted slope against α
    with the predicted one; runs (count), modes_learned (runs that learned every mode),
    up_jumps / down_jumps / multi_jumps (rank changes by +1, −1, and by more than 1 between
    records, over all runs); plateau_ranks per run; checks: modes_in_order (every run learns
    all modes, largest first), rank_rises_one_at_a_time (no rank decrease or multi-rank jump in
    any run), plateau_ranks (in every run the ranks of A at the successive loss plateaus rise
    and include every rank 0..r−1, and the run ends at rank r), time_scaling (every fitted slope within scaling_tol of the
    prediction); passed; wall_time_s.
    """
    spec = device_option("saddle-to-saddle", resolve_preset("saddle-to-saddle", PRESETS, preset, options, hidden=HIDDEN_PRESETS), overrides)
    planted = sorted(spec.singular_values, reverse=True)
    r = len(planted)
    per_depth = [spec.times, spec.lr_factors] + ([spec.depth_alphas] if spec.depth_alphas is not None else [])
    if any(len(v) != len(spec.depths) for v in per_depth):
        raise ConfigError("saddle-to-saddle: times, lr_factors (and depth_alphas) need one entry per depth")
    if len(set(planted)) != r or r > spec.d or min(spec.depths) < 2:
        raise ConfigError("saddle-to-saddle: needs distinct singular values, at most d of them, and depths >= 2")
    task_cfg = LinearRegressionTask(d_in=spec.d, d_out=spec.d, singular_values=list(planted), inputs="whitened",
                                    n_train=2 * spec.d, n_test=0, seed=spec.task_seed)
    task = make_task(task_cfg)
    threshold = planted[-1] / 2
    start = time.perf_counter()
    before = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    traj_rows, trans_rows, plat_rows, summary_depths = [], [], [], {}
    loss_panels, sv_panels, scaling_panels = {}, {}, {}
    checks_runs = {"in_order": [], "one_at_a_time": [], "plateaus": []}
    jumps = {"up": 0, "down": 0, "multi": 0}
    try:
        for i, depth in enumerate(spec.depths):
            alphas = spec.depth_alphas[i] if spec.depth_alphas is not None else spec.alphas
            members = [(a, s) for a in alphas for s in spec.seeds]
            net = EnsembleMLP.init(len(members), [spec.d] + [spec.width] * (depth - 1) + [spec.d],
                                   seeds=[s for _, s in members], init_scale=[a for a, _ in members], dtype=torch.float64,
                                   device=spec.device, activation="linear", bias=False)
            lr = spec.lr_factors[i] / (2 * depth * planted[0] ** (2 - 2 / depth))
            steps = int(math.ceil(spec.times[i] / lr))
            traj = train_dln(net, task.x_train, task.y_train, 0.0, lr, steps, log_steps(steps, spec.records))
            t = traj.steps * lr
            t_k = np.full((len(members), r), np.nan)
            for e, (alpha, seed) in enumerate(members):
                sv, loss = traj.singular_values[:, e], traj.fit[:, e]
                ranks = (sv >= threshold).sum(1)
                for j in range(len(t)):
                    traj_rows.append({"depth": depth, "alpha": alpha, "seed": seed, "step": int(traj.steps[j]), "time": t[j],
                                      "loss": loss[j], "rank": int(ranks[j])} | {f"s{q + 1}": sv[j, q] for q in range(sv.shape[1])})
                t_k[e] = learning_times(t, sv, planted)
                for k in range(r):
                    trans_rows.append({"depth": depth, "alpha": alpha, "seed": seed, "mode": k + 1, "s_star": planted[k], "t": t_k[e, k]})
                up, down = rank_jumps(ranks)
                steps_up = np.diff(ranks)
                jumps["up"] += up
                jumps["down"] += down
                jumps["multi"] += int(np.sum(np.abs(steps_up) > 1))
                checks_runs["in_order"].append(bool(np.all(np.isfinite(t_k[e])) and np.all(np.diff(t_k[e]) > 0)))
                checks_runs["one_at_a_time"].append(down == 0 and not np.any(steps_up > 1) and ranks[-1] == r)
                found = plateaus(t, np.maximum(loss, 1e-300), spec.slope_tol, spec.min_decades)
                plateau_ranks = []
                for q, (t0, t1, level) in enumerate(found):
                    mid = math.sqrt(t0 * t1)
                    rank = int(ranks[np.searchsorted(t, mid, side="right") - 1])
                    plateau_ranks.append(rank)
                    plat_rows.append({"depth": depth, "alpha": alpha, "seed": seed, "plateau": q, "t_start": t0, "t_end": t1,
                                      "loss": level, "rank": rank})
                ok = set(range(r)) <= set(plateau_ranks) and ranks[-1] == r and all(
                    b > a for a, b in zip(plateau_ranks, plateau_ranks[1:]))
                checks_runs["plateaus"].append(ok)
            # scaling: median over seeds per α, fitted against log α
            med = np.array([[_median([t_k[e, k] for e, (a, _) in enumerate(members) if a == alpha]) for k in range(r)]
                            for alpha in alphas])
            log_a = np.log(np.asarray(alphas))
            modes = []
            for k in range(r):
                yk = np.log(med[:, k]) if depth >= 3 else med[:, k]
                good = np.isfinite(yk)
                slope = float(np.polyfit(log_a[good], yk[good], 1)[0]) if good.sum() >= 2 else float("nan")
                modes.append({"mode": k + 1, "s_star": planted[k], "slope": slope, "predicted": predicted_slope(depth, planted[k])})
            summary_depths[str(depth)] = {"lr": lr, "steps": steps, "alphas": list(alphas), "median_t": med.tolist(), "modes": modes}
            first = [e for e, (_, s) in enumerate(members) if s == spec.seeds[0]]
            loss_panels[depth] = [(members[e][0], t, traj.fit[:, e], t_k[e]) for e in first]
            sv_panels[depth] = (members[first[0]][0], t, traj.singular_values[:, first[0], :r])
            law = "log t_k ∝ −(L−2) log α" if depth >= 3 else "t_k linear in log α"
            scaling_panels[depth] = (np.asarray(alphas), med, law)
    finally:
        torch.set_num_threads(before)
    slopes_ok = all(abs(m["slope"] - m["predicted"]) <= spec.scaling_tol * abs(m["predicted"])
                    for d in summary_depths.values() for m in d["modes"])
    checks = {
        "modes_in_order": all(checks_runs["in_order"]),
        "rank_rises_one_at_a_time": all(checks_runs["one_at_a_time"]),
        "plateau_ranks": all(checks_runs["plateaus"]),
        "time_scaling": slopes_ok,
    }
    summary = {
        "preset": preset, "spec": {k: v for k, v in spec.__dict__.items()}, "prediction": PREDICTION, "rank_rule": RANK_RULE,
        "planted": planted, "depths": summary_depths, "runs": len(checks_runs["in_order"]),
        "modes_learned": int(sum(checks_runs["in_order"])), "runs_with_plateau_ranks_ok": int(sum(checks_runs["plateaus"])),
        "up_jumps": jumps["up"], "down_jumps": jumps["down"], "multi_jumps": jumps["multi"],
        "checks": checks, "passed": all(checks.values()), "wall_time_s": time.perf_counter() - start,
    }
    figures = {"loss": plot_loss_curves(loss_panels), "singular_values": plot_singular_values(sv_panels, planted),
               "scaling": plot_time_scaling(scaling_panels)}
    out = Path(out)
    with staged_dir(out, overwrite=True) as stage:
        plateau_table = pd.DataFrame(plat_rows, columns=["depth", "alpha", "seed", "plateau", "t_start", "t_end", "loss", "rank"])
        write_outputs(stage, summary, figures, {"trajectories": pd.DataFrame(traj_rows),
                                                "transitions": pd.DataFrame(trans_rows), "plateaus": plateau_table})
    _print(summary, out)
    return summary


def _print(summary: dict, out: Path) -> None:
    console = Console()
    console.print(f"saddle-to-saddle ({summary['preset']}): {summary['runs']} runs, planted {summary['planted']}, in {out}")
    for depth, d in summary["depths"].items():
        slopes = ", ".join(f"mode {m['mode']}: {m['slope']:.3f} (pred {m['predicted']:.3f})" for m in d["modes"])
        console.print(f"  depth {depth}: slope vs α  {slopes}")
    console.print(f"  rank jumps: {summary['up_jumps']} up, {summary['down_jumps']} down, {summary['multi_jumps']} by more than one;"
                  f" time {summary['wall_time_s']:.0f} s")
    print_checks(console, summary["checks"])
