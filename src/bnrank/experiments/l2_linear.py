"""L2-regularized deep linear networks on matrix completion: minima of several ranks, one-way
rank jumps of SGD, and the effect of depth (Wang & Jacot 2023; Dai et al., Schatten quasi-norms).

    bnrank reproduce l2-linear [--preset quick|paper] [--out DIR]

Task: `matrix-completion` (`bnrank.tasks.completion`, a planted rank-r matrix M from a random
subset of its entries), trained with the masked objective of `bnrank.experiments.dln`:
C = n_cols · (mean squared error over the observed entries) + λ ‖θ‖², A = W_L ⋯ W_1 the learned
(transposed) matrix of a linear net without biases. At a critical point the factors are
balanced, so ‖θ‖² = L Σ s_i(A)^{2/L} (docs/theory.md §3) and C = fit(A) + λ L Σ s_i(A)^{2/L}.

(a) GD from several init scales and seeds: the ranks of the minima it ends in, and ‖θ‖² against
    the closed-form cost of the learned matrix.
(b) From each GD end point, SGD (minibatches of observed entries, constant lr) for `sgd_steps`,
    `sgd_repeats` times with different minibatch seeds; the rank of A is recorded on a log grid
    and its jumps up and down are counted (`rank_jumps`). The same number of plain GD steps from
    the same points is the control: rank drops that GD makes too are the slow collapse of
    singular values still on their way to 0, not jumps between minima.
(c) At fixed λ and init, the rank of the GD end point against depth (a stronger low-rank bias
    as L grows: the penalty is a Schatten 2/L quasi-norm).

Rank of A: # singular values > rank_tol · s_1(A). Writes into `out` (staged): minima.parquet,
sgd.parquet (rank traces), depth.parquet, minima.png/.svg, sgd_ranks.png/.svg,
depth.png/.svg and summary.json (see `run`).
"""

from __future__ import annotations

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
from bnrank.config import MatrixCompletionTask
from bnrank.errors import ConfigError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, torch_threads, write_outputs
from bnrank.experiments.dln import device_option, end_to_end, log_steps, rank_jumps, train_dln
from bnrank.measure.theory import linear_cost
from bnrank.models import EnsembleMLP
from bnrank.plots.dln import plot_rank_traces
from bnrank.tasks import make_task

RANK_RULE = "rank of A = # singular values > rank_tol · s_1(A)"


@dataclass(frozen=True)
class Preset:
    """n × n completion of a rank-`rank` matrix with `observed` of the entries; depth `depth`
    nets of width n at λ = `lam`, GD at lr `lr` for `gd_steps` from every (init scale, seed);
    SGD with `batch_size` observed entries per step for `sgd_steps`, `sgd_repeats` minibatch
    seeds per end point, ranks recorded at `records` log-spaced steps; part (c): `depths` from
    init scale `depth_init` with `depth_seeds`. The closed-form check holds when every GD end
    point has |‖θ‖² − L Σ s^{2/L}| ≤ cost_tol · L Σ s^{2/L}."""

    n: int = 10
    rank: int = 2
    observed: float = 0.6
    noise: float = 0.0
    task_seed: int = 0
    depth: int = 3
    lam: float = 0.02
    lr: float = 0.004
    init_scales: tuple[float, ...] = (0.3, 1.0, 1.5, 2.0, 2.5, 3.0)
    seeds: tuple[int, ...] = (0, 1)
    gd_steps: int = 15000
    batch_size: int = 2
    sgd_steps: int = 10000
    sgd_repeats: int = 2
    records: int = 100
    depths: tuple[int, ...] = (2, 3, 4, 5)
    depth_init: float = 1.0
    depth_seeds: tuple[int, ...] = (0, 1, 2)
    rank_tol: float = 1e-2
    cost_tol: float = 1e-2
    threads: int | None = 1
    device: str = "cpu"


PRESETS: dict[str, Preset] = {
    "tiny": Preset(n=6, observed=0.7, init_scales=(0.3, 2.0), seeds=(0,), gd_steps=300, sgd_steps=200, sgd_repeats=1,
                   records=20, depths=(2, 3), depth_seeds=(0,), cost_tol=1.0),
    "quick": Preset(noise=0.5, gd_steps=40000),
    "paper": Preset(n=30, rank=3, observed=0.4, noise=0.5, lr=0.001, init_scales=(0.3, 0.6, 1.0, 1.5, 2.0, 2.5, 3.0), seeds=tuple(range(8)),
                    gd_steps=200000, sgd_steps=200000, sgd_repeats=8, records=300, depths=(2, 3, 4, 5, 6),
                    depth_seeds=tuple(range(8)), cost_tol=1e-3, threads=None),
}
HIDDEN_PRESETS = {"tiny"}


def matrix_rank(sv: np.ndarray, rank_tol: float) -> np.ndarray:
    """Rank of A from its singular values (..., m) descending: # > rank_tol · s_1 (NaN rows: −1)."""
    sv = np.asarray(sv, dtype=float)
    ranks = (sv > rank_tol * sv[..., :1]).sum(-1)
    return np.where(np.isnan(sv[..., 0]), -1, ranks)


def _net(spec: Preset, depth: int, scales: Sequence[float], seeds: Sequence[int]) -> EnsembleMLP:
    return EnsembleMLP.init(len(scales), [spec.n] * (depth + 1), seeds=list(seeds), init_scale=list(scales),
                            dtype=torch.float64, device=spec.device, activation="linear", bias=False)


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), **options) -> dict:
    """Run parts (a)–(c) for `preset`; `options` replace Preset fields.

    Returns the summary written to ``summary.json``: preset, spec, rank_rule; minima: per GD
    end point (init scale, seed) its rank, fit, objective, ‖θ‖², closed-form cost and their
    relative gap; sgd: up/down jump counts over all SGD runs and over the GD control runs,
    how many SGD runs end at a lower (higher) rank than the GD control from the same point,
    rank at start and end per run; depth: rank per depth and seed; checks: minima_ranks_differ
    (≥ 2 distinct ranks among the GD end points), cost_matches_closed_form (every gap ≤
    cost_tol), sgd_one_way (SGD never raised a rank, and lowered one at least once),
    depth_lowers_rank (median rank non-increasing in depth, lower at the deepest than at the
    shallowest); passed; wall_time_s.
    """
    spec = device_option("l2-linear", resolve_preset("l2-linear", PRESETS, preset, options, hidden=HIDDEN_PRESETS), overrides)
    if spec.depth < 2 or min(spec.depths) < 1:
        raise ConfigError("l2-linear: depth must be >= 2 and every depth >= 1")
    task = make_task(MatrixCompletionTask(n_rows=spec.n, n_cols=spec.n, rank=spec.rank, observed=spec.observed,
                                          noise=spec.noise, seed=spec.task_seed))
    x, y, mask = task.x_train, task.y_train, task.mask
    start = time.perf_counter()
    with torch_threads(spec.threads):
        # (a) GD minima from several inits
        pairs = [(s, seed) for s in spec.init_scales for seed in spec.seeds]
        net = _net(spec, spec.depth, [s for s, _ in pairs], [seed for _, seed in pairs])
        gd = train_dln(net, x, y, spec.lam, spec.lr, spec.gd_steps, [spec.gd_steps], mask=mask)
        a = end_to_end(list(net.weights)).detach().cpu()
        norm = sum(w.detach().square().sum((1, 2)) for w in net.weights).cpu().numpy()
        minima = []
        for e, (scale, seed) in enumerate(pairs):
            finite = bool(torch.isfinite(a[e]).all())
            cost = linear_cost(a[e], spec.depth) if finite else float("nan")
            minima.append({"init_scale": scale, "seed": seed, "rank": int(matrix_rank(gd.singular_values[-1, e], spec.rank_tol)),
                           "fit": float(gd.fit[-1, e]), "objective": float(gd.objective[-1, e]), "param_norm_sq": float(norm[e]),
                           "closed_form_cost": cost, "gap": abs(float(norm[e]) - cost) / cost if finite else float("nan"),
                           "test_mse": float(((a[e].T - task.y_test) ** 2).mean()) if finite else float("nan")})
        # (b) SGD from the GD end points, with a GD control
        record = log_steps(spec.sgd_steps, spec.records)
        sgd_rows, counts = [], {"sgd": [0, 0], "gd": [0, 0]}
        ends = [w.detach().clone() for w in net.weights]
        for kind, repeats in (("sgd", spec.sgd_repeats), ("gd", 1)):
            for rep in range(repeats):
                runner = EnsembleMLP([w.clone() for w in ends], None, activation="linear")
                traj = train_dln(runner, x, y, spec.lam, spec.lr, spec.sgd_steps, record, mask=mask,
                                 batch_size=spec.batch_size if kind == "sgd" else None, seed=rep)
                ranks = matrix_rank(traj.singular_values, spec.rank_tol)  # (T, E)
                for e, (scale, seed) in enumerate(pairs):
                    up, down = rank_jumps(ranks[:, e])
                    counts[kind][0] += up
                    counts[kind][1] += down
                    sgd_rows += [{"kind": kind, "repeat": rep, "init_scale": scale, "seed": seed, "step": int(s), "rank": int(r),
                                  "objective": float(o)} for s, r, o in zip(traj.steps, ranks[:, e], traj.objective[:, e])]
        # (c) depth
        depth_rows = []
        for depth in spec.depths:
            dnet = _net(spec, depth, [spec.depth_init] * len(spec.depth_seeds), spec.depth_seeds)
            traj = train_dln(dnet, x, y, spec.lam, spec.lr, spec.gd_steps, [spec.gd_steps], mask=mask)
            for e, seed in enumerate(spec.depth_seeds):
                depth_rows.append({"depth": depth, "seed": seed, "rank": int(matrix_rank(traj.singular_values[-1, e], spec.rank_tol)),
                                   "objective": float(traj.objective[-1, e]), "fit": float(traj.fit[-1, e])})
    minima_df, sgd_df, depth_df = pd.DataFrame(minima), pd.DataFrame(sgd_rows), pd.DataFrame(depth_rows)
    medians = depth_df.groupby("depth")["rank"].median()
    checks = {
        "minima_ranks_differ": int(minima_df["rank"].nunique()) >= 2,
        "cost_matches_closed_form": bool((minima_df.gap <= spec.cost_tol).all()),
        "sgd_one_way": counts["sgd"][0] == 0 and counts["sgd"][1] > 0,
        "depth_lowers_rank": bool(np.all(np.diff(medians.to_numpy()) <= 0) and medians.iloc[-1] < medians.iloc[0]),
    }
    runs = sgd_df.groupby(["kind", "repeat", "init_scale", "seed"])["rank"]
    last = sgd_df.sort_values("step").groupby(["kind", "repeat", "init_scale", "seed"])["rank"].last()
    gd_last = {(scale, seed): r for (kind, _, scale, seed), r in last.items() if kind == "gd"}
    sgd_last = [(r, gd_last[(scale, seed)]) for (kind, _, scale, seed), r in last.items() if kind == "sgd"]
    below, above = sum(r < g for r, g in sgd_last), sum(r > g for r, g in sgd_last)
    summary = {
        "preset": preset, "spec": dict(spec.__dict__), "rank_rule": RANK_RULE, "planted_rank": spec.rank,
        "n_observed": task.metadata["n_observed"], "minima": minima,
        "sgd": {"sgd_up_jumps": counts["sgd"][0], "sgd_down_jumps": counts["sgd"][1], "gd_control_up_jumps": counts["gd"][0],
                "gd_control_down_jumps": counts["gd"][1], "runs": int(spec.sgd_repeats * len(pairs)),
                "sgd_ends_below_gd": int(below), "sgd_ends_above_gd": int(above),
                "rank_start_end": [[k[0], k[1], k[2], k[3], int(v.iloc[0]), int(v.iloc[-1])] for k, v in runs]},
        "depth": {str(d): depth_df[depth_df.depth == d]["rank"].tolist() for d in spec.depths},
        "checks": checks, "passed": all(checks.values()), "wall_time_s": time.perf_counter() - start,
    }
    sgd_only = sgd_df[sgd_df.kind == "sgd"].pivot_table(index="step", columns=["repeat", "init_scale", "seed"], values="rank")
    figures = {"minima": _plot_minima(minima_df, spec.depth),
               "sgd_ranks": plot_rank_traces(sgd_only.index.to_numpy(), sgd_only.to_numpy(),
                                             f"SGD (batch {spec.batch_size}) from the GD minima: rank of A"),
               "depth": _plot_depth(depth_df, spec.lam)}
    out = Path(out)
    with staged_dir(out, overwrite=True) as stage:
        write_outputs(stage, summary, figures, {"minima": minima_df, "sgd": sgd_df, "depth": depth_df})
    _print(summary, out)
    return summary


def _plot_minima(df: pd.DataFrame, depth: int) -> Figure:
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    sc = left.scatter(df.closed_form_cost, df.param_norm_sq, c=df["rank"], cmap="viridis")
    lo, hi = np.nanmin(df.closed_form_cost), np.nanmax(df.closed_form_cost)
    left.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
    left.set_xlabel(f"{depth}·Σ s_i(A)^(2/{depth})")
    left.set_ylabel("‖θ‖² at the GD end point")
    fig.colorbar(sc, ax=left, label="rank of A")
    right.scatter(df["rank"], df.objective, c=df.init_scale, cmap="plasma")
    right.set_xlabel("rank of A")
    right.set_ylabel("objective")
    right.set_title("GD minima: colour = init scale", fontsize=9)
    return fig


def _plot_depth(df: pd.DataFrame, lam: float) -> Figure:
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.scatter(df.depth, df["rank"], alpha=0.6)
    med = df.groupby("depth")["rank"].median()
    ax.plot(med.index, med.to_numpy(), "k-", label="median")
    ax.set_xlabel("depth L")
    ax.set_ylabel("rank of the GD end point")
    ax.set_title(f"λ = {lam:g}: deeper nets learn lower ranks", fontsize=9)
    ax.legend()
    return fig


def _print(summary: dict, out: Path) -> None:
    console = Console()
    console.print(f"l2-linear ({summary['preset']}): planted rank {summary['planted_rank']}, in {out}")
    for m in summary["minima"]:
        console.print(f"  init {m['init_scale']:g} seed {m['seed']}: rank {m['rank']}  objective {m['objective']:.4f}  "
                      f"‖θ‖² {m['param_norm_sq']:.4f}  closed form {m['closed_form_cost']:.4f}  gap {m['gap']:.1e}")
    s = summary["sgd"]
    console.print(f"  SGD: {s['sgd_up_jumps']} rank jumps up, {s['sgd_down_jumps']} down over {s['runs']} runs "
                  f"(GD control: {s['gd_control_up_jumps']} up, {s['gd_control_down_jumps']} down); "
                  f"{s['sgd_ends_below_gd']} SGD runs end below GD's rank, {s['sgd_ends_above_gd']} above")
    console.print(f"  rank by depth: {summary['depth']}   time {summary['wall_time_s']:.0f} s")
    print_checks(console, summary["checks"])
