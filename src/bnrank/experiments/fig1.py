"""The paper's Figure 1: the depth sweep on the rank-2 composition task (docs/theory.md §5).

    bnrank reproduce fig1 [--preset quick|paper] [--out DIR]

Trains `trials` networks (seeds) at every depth of the preset on the composition task
(`bnrank.tasks.composition`, true rank 2) at λ = 0.001 with the default recipe
(`bnrank.training.recipe`), through the sweep engine: the sweep lives in ``out/sweep/`` and
rerunning the command resumes it (finished cells are kept). Then writes into `out`:

    fig1a.png/.svg   ‖θ‖² at the end of training against depth, color = rank of W_{L/2}
                     (# singular values > 0.1), marker '.' if the final train cost is < 0.1
                     else 'x', with the affine fit ‖θ‖² ≈ slope·L + intercept of each rank class
    fig1b.png/.svg   singular values of every W_ℓ for 4 trials (`representative_trials`)
    runs.parquet     one row per network: the sweep's runs table plus `rank` (its rank class),
                     `fitted` (train cost < cost_max), analyze's `jac_rank`, `r1_lower_bound`,
                     and `r1_at_rank` (see RANK_RULE)
    rank_minima.parquet  per-rank minima (MINIMA_RULE): one row per start point finished at each
                     depth (`bnrank.measure.rank_minima`, columns in docs/columns.md "minima");
                     fig1a draws one curve per rank class through its best minima (solid where
                     that class has the lowest objective at both ends of a segment, dashed elsewhere)
    minima/          one Parquet file per depth of finished starts, written when the depth is
                     done; a rerun reads them back (resumes)
    summary.json     see `run`

and prints the per-depth, per-rank-class and per-rank-minima tables.

Conventions (ours; the paper does not spell them out):

- RANK_RULE: every network is its own point: its rank class is the rank of its own middle
  weight matrix W_{⌈L/2⌉}, whatever its seed-mates at the same depth found. The rank *of a
  depth* (for the acceptance criteria) is the rank of its network with the lowest final
  objective, the best estimate of the regularized minimum found there.
- FIT_RULE: within each rank class, ‖θ‖² of its non-diverged networks (one row per network,
  all seeds) is fitted by least squares against L (`fit_depth_expansion`).
- SLOPE_RULE: the acceptance check "slope = rank" reads the slope of the theory's expansion
  ‖θ‖² ≈ k·L + R⁽¹⁾ + R⁽²⁾/L (docs/theory.md §4, `fit_depth_expansion(with_r2=True)`) where the data
  determine its R⁽²⁾ (|R⁽²⁾| > 2 standard errors), else the affine fit's that fig1a draws.
  Where R⁽²⁾/L² is not small against k the affine slope is biased low (the quick preset's
  rank-3 class at depths 6–14: ‖θ‖² rises by 2.2, 3.8, 4.5, 5.0 per two depths, as k − R⁽²⁾/L²
  predicts with k = 3 and R⁽²⁾ ≈ 93); over a narrow range of 1/L (a class at large depths only)
  the three-term fit is ill-conditioned (rank 2 at depths 16–28: affine slope 1.98 ± 0.12,
  expansion 1.49 ± 0.75 with R⁽²⁾ not significant, in a He-init probe sweep). Both fits are in
  summary.json and in the printed table.
- LOSS_RULE: the objective is torch.nn.MSELoss's mean over points *and* output coordinates plus
  λ‖θ‖² (`train.mse_reduction: mean`), and "train cost" is that mean squared error. This is our
  reading of the paper's λ = 0.001 and "train cost < 0.1": with the squared error summed over the
  20 outputs (docs/theory.md §1's default), λ = 0.001 is 20× weaker and, on this task, the networks
  keep rank 3 up to depth 14 and do not converge beyond (measured: bench/README.md, "Where the rank-2 range appears").
- TASK_RULE: the presets fix the part of the training targets' variance outside E[y | z_1] at
  `minor_fraction` ε = MINOR_FRACTION (y = h(z_1, c·z_2), c chosen per task draw by
  `bnrank.tasks.composition.minor_scale_for`). Rank 1 overtakes rank 2 where the norm it saves,
  λ·(‖θ‖²_rank2(L) − ‖θ‖²_rank1(L)) ≈ λ·(L + ΔR⁽¹⁾), exceeds the fit error it costs (about ε;
  docs/theory.md §2's tradeoff): L* ≈ (MSE_rank1 − MSE_rank2)/λ − ΔR⁽¹⁾. A fixed c puts L* at
  very different depths per task draw: at c = 0.08, ε is 0.013–0.039 over task seeds 0–5, and
  the per-rank minima crossed between 24 and 26 on seed 0 and were predicted beyond 38 on seed 1.
  With y = h(z_1, z_2) (c = 1), ε ≈ 0.54 even for the best single direction of (z_1, z_2), which
  puts rank 1 and the collapse θ = 0 at depths in the hundreds at λ = 0.001: no preset depth can
  show a rank below 2 (measured: results/fig1-paper-h100, ranks 3 then 2 up to depth 30). The
  paper's own task is not published; ε is chosen from these crossings (results/fig1-quick-cpu).
- Every depth L is trained by the default recipe of its own depth (`default_train_config(L)`,
  init scale `default_init_scale(L)`), one sweep *case* per depth, with the recipe's phase
  lengths times the preset's `steps_factor` (the last phase stops early by the stop rule).
- Seeds of one depth train as one ensemble: the recipe's stop rule and curvature-scaled steps
  act per member, so a network's result does not depend on its ensemble mates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from bnrank.atomic import write_json, write_parquet
from bnrank.errors import StoreError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, write_outputs
from bnrank.measure.rank_minima import CAPPED_FRACTION, best_minima, depth_minima, problem_from_sweep
from bnrank.measure.theory import fit_depth_expansion
from bnrank.plots.fig1 import plot_norm_vs_depth, plot_trial_spectra, rank_colors
from bnrank.pipeline import RANK_THRESHOLD
from bnrank.sweep import SweepResult, load_sweep, run_sweep
from bnrank.sweep.executors import _context
from bnrank.tasks import make_task
from bnrank.training.recipe import default_init_scale, default_phase_steps, default_train_config

TRUE_RANK = 2
MINOR_FRACTION = 0.025
"""ε of TASK_RULE: the part of the training targets' variance outside E[y | z_1]."""
RANK_RULE = (
    "a network's rank = # singular values > 0.1 of its own W_{ceil(L/2)}; "
    "a depth's rank = the rank of its network with the lowest final objective"
)
LOSS_RULE = "objective = mean over points and outputs of (f - y)^2 + lam·‖θ‖²; train cost = that mean"
FIT_RULE = "least squares of ‖θ‖² on depth over the non-diverged networks of a rank class (one row per network)"
SLOPE_RULE = (
    "a rank class's checked slope is that of the least-squares fit ‖θ‖² ≈ slope·L + R1 + R2/L (docs/theory.md §4) "
    "where its R2 is significant (|R2| > 2 standard errors), else that of the affine fit slope·L + intercept"
)
MINIMA_RULE = (
    "per depth, the rank classes {r-1, r, r+1} among the seen ranks and rank 1, r = the depth's rank (RANK_RULE); "
    "a class's minimum = the lowest-objective finished start that stayed in it (bnrank.measure.rank_minima); "
    "a depth's rank by minima = the class of its lowest minimum; the acceptance checks read ranks by minima, "
    "and the slope check fits each class over the depths where its minimum is the lowest"
)


@dataclass(frozen=True)
class Preset:
    """What `run` trains and how it judges the result.

    depths: the depths L swept; trials: seeds per depth; width, n_train, n_test, g_scale,
    minor_fraction, bias_std, task_seed: the network width and the composition task
    (CompositionTask fields; minor_fraction: TASK_RULE);
    lam: λ; mse_reduction: the objective's fit term (LOSS_RULE); steps_factor: multiplies the
    recipe's phase lengths at each depth (`default_phase_steps`; polish is a cap, the stop rule
    ends it); phase_steps: fixed (adam, descent, polish) steps for every depth instead; device: RunConfig.device ("auto" takes
    a GPU when there is one); workers × threads: sweep processes and torch threads each; analyze_points: training inputs `bnrank.analyze` measures (Jacobians).
    Acceptance: cost_max (train cost of a fitted network), min_range (consecutive depths of
    rank TRUE_RANK), slope_tol (relative slope error allowed in a rank class with ≥ min_range
    depths). Per-rank minima (MINIMA_RULE): minima_steps_factor multiplies the descent phases of
    each depth's train config for the finishes; minima_certify certifies every finish.
    """

    depths: tuple[int, ...]
    trials: int
    width: int
    n_train: int
    steps_factor: float = 1.0
    phase_steps: tuple[int, int, int] | None = None
    n_test: int = 0
    g_scale: float = 1.0
    minor_fraction: float = MINOR_FRACTION
    bias_std: float = 0.5
    task_seed: int = 0
    lam: float = 1e-3
    mse_reduction: str = "mean"
    device: str = "cpu"
    workers: int = 1
    threads: int | None = 1
    analyze_points: int = 64
    cost_max: float = 0.1
    min_range: int = 3
    slope_tol: float = 0.15
    minima_steps_factor: float = 1.0
    minima_certify: bool = True


PRESETS: dict[str, Preset] = {
    # Seconds: a smoke test of the whole pipeline (tests/test_fig1.py), not a result.
    "tiny": Preset(depths=(3, 4, 5), trials=2, width=8, n_train=32, phase_steps=(300, 30, 30),
                   analyze_points=8, minima_certify=False),
    # ≤ 15 min on 2 shared CPU cores (measured: results/fig1-quick-cpu/README.md).
    "quick": Preset(depths=tuple(range(4, 29, 2)), trials=2, width=40, n_train=150, g_scale=0.2,
                    steps_factor=0.5, workers=2, minima_steps_factor=0.4, minima_certify=False),
    # The paper's sizes: depths up to 30, 4 trials, width 100, N = 500 (a GPU or a cluster).
    "paper": Preset(depths=tuple(range(4, 31, 2)), trials=4, width=100, n_train=500, n_test=500, g_scale=0.2,
                    device="auto", threads=None),
}
HIDDEN_PRESETS = {"tiny"}


D_OUT = 20


def depth_case(p: Preset, depth: int) -> dict:
    """The model and train sections of the networks of one depth: the recipe at that depth."""
    steps = p.phase_steps or [max(1, round(s * p.steps_factor)) for s in default_phase_steps(depth)]
    train = default_train_config(depth, p.lam, adam_steps=steps[0], descent_steps=steps[1], polish_steps=steps[2],
                                 mse_reduction=p.mse_reduction, d_out=D_OUT)
    return {
        "model": {"depth": depth, "width": p.width, "init_scale": default_init_scale(depth)},
        "train": train.model_dump(mode="json", exclude_defaults=True) | {"lam": p.lam},
    }


def sweep_spec(p: Preset) -> dict:
    """The sweep spec of a preset: one cell per (depth, seed); see the module docstring."""
    return {
        "name": "fig1",
        "base": {
            "device": p.device,
            "task": {"kind": "composition", "rank": TRUE_RANK, "latent_dim": 8, "d_in": 20, "d_out": D_OUT,
                     "n_train": p.n_train, "n_test": p.n_test, "hidden": 100, "bias_std": p.bias_std,
                     "g_scale": p.g_scale, "minor_fraction": p.minor_fraction, "seed": p.task_seed},
            "model": {"width": p.width},
        },
        "cases": [depth_case(p, d) for d in p.depths],
        "trials": p.trials,
        "analyze": True,
        "analyze_points": p.analyze_points,
        "analyze_curvature": False,
    }


def network_table(result: SweepResult) -> pd.DataFrame:
    """One row per network: the sweep's runs plus `rank` (= mid_rank), analyze's `jac_rank` and
    `r1_lower_bound`, and `r1_at_rank` = max over the analyzed inputs x of 2·Σ_{i≤rank} log s_i(Jf(x))
    (2·log|Jf(x)|₊ when Jf(x) has rank `rank`, the R⁽¹⁾ lower bound of docs/theory.md §2) over the
    inputs whose Jacobian has `rank` nonzero singular values (NaN if none, or rank 0)."""
    runs = result.runs.drop(columns=["model", "train"], errors="ignore").copy()
    runs["rank"] = runs["mid_rank"].astype(int)
    net = result.network[["cell_id", "jac_rank", "r1_lower_bound"]]
    runs = runs.merge(net, on="cell_id", how="left")
    ranks = dict(zip(runs["cell_id"], runs["rank"]))
    pts = result.points[["cell_id", "jac_singular_values"]]
    r1 = {}
    for cid, group in pts.groupby("cell_id"):
        k = ranks.get(cid, 0)
        top = [np.asarray(s, dtype=float)[:k] for s in group["jac_singular_values"]]
        values = [2 * np.log(s).sum() for s in top if k > 0 and len(s) == k and s[-1] > 0]
        r1[cid] = float(max(values)) if values else float("nan")
    runs["r1_at_rank"] = runs["cell_id"].map(r1).astype(float)
    return runs


def depth_table(runs: pd.DataFrame, cost_max: float = 0.1) -> pd.DataFrame:
    """One row per depth (ascending): rank and mse of its lowest-objective non-diverged network
    (RANK_RULE; rank -1 and NaN when all diverged), `fitted` (that mse < cost_max) and
    `ranks`, the ranks of all its networks in seed order."""
    rows = []
    for depth, group in runs.groupby("depth", sort=True):
        live = group[~group["diverged"].astype(bool)]
        best = live.loc[live["objective"].idxmin()] if not live.empty else None
        rows.append({
            "depth": int(depth),
            "rank": int(best["rank"]) if best is not None else -1,
            "mse": float(best["mse"]) if best is not None else float("nan"),
            "fitted": bool(best is not None and best["mse"] < cost_max),
            "ranks": [int(r) for r in group.sort_values("seed")["rank"]],
        })
    return pd.DataFrame(rows, columns=["depth", "rank", "mse", "fitted", "ranks"])


def fit_rank_classes(runs: pd.DataFrame) -> pd.DataFrame:
    """`fit_depth_expansion` of the non-diverged networks, one row per rank class (FIT_RULE): the
    affine fit (slope, intercept, the paper's claim), plus the theory's expansion
    ‖θ‖² ≈ k·L + R⁽¹⁾ + R⁽²⁾/L (docs/theory.md §4) as `expansion_slope`, `expansion_slope_stderr`,
    `expansion_intercept`, `r2_coef`, `r2_coef_stderr` (NaN below 3 depths), and the fit the
    slope check reads (SLOPE_RULE): `checked_fit` ("expansion" where |r2_coef| > 2·r2_coef_stderr,
    else "affine"; "none" below 2 depths) and its `checked_slope`."""
    live = runs[~runs["diverged"].astype(bool)][["depth", "param_norm_sq", "rank"]]
    names = ["rank", "slope", "slope_stderr", "intercept", "r2_coef", "r2_coef_stderr"]
    expansion = fit_depth_expansion(live, with_r2=True)[names]
    expansion.columns = ["rank", "expansion_slope", "expansion_slope_stderr", "expansion_intercept", "r2_coef",
                         "r2_coef_stderr"]
    fits = fit_depth_expansion(live).merge(expansion, on="rank")
    fits = fits.astype({c: float for c in fits.columns if c != "rank" and not c.startswith("n_")})  # typed when empty
    curved = (fits["r2_coef"].abs() > 2 * fits["r2_coef_stderr"]).to_numpy()
    fits["checked_fit"] = np.where(curved, "expansion", np.where(np.isfinite(fits["slope"]), "affine", "none"))
    fits["checked_slope"] = np.where(curved, fits["expansion_slope"], fits["slope"])
    return fits


def acceptance(depths: pd.DataFrame, fits: pd.DataFrame, target_rank: int = TRUE_RANK, min_range: int = 3,
               slope_tol: float = 0.15, cost_max: float = 0.1) -> dict:
    """Whether the sweep shows the paper's phenomenon, computed from the tables.

    depths: `depth_table` output; fits: `fit_rank_classes` output (rank, n_depths,
    checked_slope). Returns {"criteria": [{"name", "statement", "held", "value"}], "passed":
    all held}. Consecutive depths are consecutive entries of the swept depths.
    """
    depths = depths.sort_values("depth", ignore_index=True)
    good = (depths["rank"] == target_rank) & depths["fitted"]
    best_run: list[int] = []
    current: list[int] = []
    for depth, ok in zip(depths["depth"], good):
        current = current + [int(depth)] if ok else []
        if len(current) > len(best_run):
            best_run = current
    beyond = depths[depths["depth"] > best_run[-1]] if best_run else depths.iloc[:0]
    lower_beyond = beyond[(beyond["rank"] >= 0) & (beyond["rank"] < target_rank)]
    higher_beyond = beyond[beyond["rank"] > target_rank]
    live_depths = depths[depths["rank"] >= 0]
    monotone = bool((np.diff(live_depths["rank"].to_numpy()) <= 0).all()) and live_depths["rank"].nunique() >= 2
    checked = fits[(fits["n_depths"] >= min_range)]
    slope_ok = {
        int(f.rank): bool(np.isfinite(f.checked_slope) and abs(f.checked_slope - f.rank) <= slope_tol * max(f.rank, 1))
        for f in checked.itertuples()
    }
    criteria = [
        {
            "name": f"rank_{target_rank}_range",
            "statement": f"at least {min_range} consecutive swept depths have rank {target_rank} with train cost < {cost_max:g}",
            "held": len(best_run) >= min_range,
            "value": best_run,
        },
        {
            "name": "smaller_rank_deeper",
            "statement": f"beyond that range some depth has rank < {target_rank} and none has rank > {target_rank}",
            "held": bool(best_run) and not lower_beyond.empty and higher_beyond.empty,
            "value": {"lower": lower_beyond["depth"].astype(int).tolist(), "higher": higher_beyond["depth"].astype(int).tolist()},
        },
        {
            "name": "rank_falls_with_depth",
            "statement": "the rank of a depth never exceeds that of a shallower depth, and at least two ranks occur",
            "held": monotone,
            "value": live_depths["rank"].astype(int).tolist(),
        },
        {
            "name": "slope_equals_rank",
            "statement": (f"in every rank class k with ≥ {min_range} depths the checked slope (SLOPE_RULE) "
                          f"is within ±{slope_tol:.0%} of k (±{slope_tol:g} for k = 0, the collapse θ = 0)"),
            "held": bool(slope_ok) and all(slope_ok.values()),
            "value": slope_ok,
        },
    ]
    return {"criteria": criteria, "passed": all(c["held"] for c in criteria)}


def minima_classes(depths: pd.DataFrame) -> dict[int, list[int]]:
    """Per depth with a live network, the rank classes its minima are sought in (MINIMA_RULE)."""
    live = depths[depths["rank"] >= 0]
    seen = set(live["rank"].astype(int)) | {TRUE_RANK - 1}
    return {int(d): sorted({int(r) - 1, int(r), int(r) + 1} & seen) for d, r in zip(live["depth"], live["rank"])}


def _depth_minima_job(sweep: str, depth: int, ranks: list[int], steps_factor: float, certify: bool) -> pd.DataFrame:
    """One depth's finished starts, in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    return depth_minima(problem_from_sweep(load_sweep(sweep)), depth, ranks, steps_factor, certify)


def rank_minima_rows(result: SweepResult, depths: pd.DataFrame, directory: Path, steps_factor: float = 1.0,
                     certify: bool = True, workers: int = 1) -> pd.DataFrame:
    """The finished starts of every depth (`bnrank.measure.rank_minima`, classes by `minima_classes`),
    one Parquet file per depth under `directory` (written atomically when it is done, read back
    on a rerun, so an interrupted run resumes); `workers` processes compute the missing depths,
    deepest first. A directory holding minima of other settings raises StoreError."""
    classes = minima_classes(depths)
    settings = {"steps_factor": steps_factor, "capped_fraction": CAPPED_FRACTION, "certify": certify,
                "classes": {str(d): r for d, r in classes.items()}}
    stored = directory / "settings.json"
    if stored.is_file() and json.loads(stored.read_text()) != settings:
        raise StoreError(f"{directory} holds per-rank minima of other settings (steps factor, capped fraction, certificate or rank "
                         "classes); use another --out or remove it")
    write_json(stored, settings)
    paths = {d: directory / f"depth_{d:03d}.parquet" for d in classes}
    todo = sorted((d for d in classes if not paths[d].is_file()), reverse=True)
    if todo and workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=_context()) as pool:
            jobs = {pool.submit(_depth_minima_job, str(result.path), d, classes[d], steps_factor, certify): d for d in todo}
            for job, d in jobs.items():
                write_parquet(paths[d], job.result())
    elif todo:
        problem = problem_from_sweep(result)
        for d in todo:
            write_parquet(paths[d], depth_minima(problem, d, classes[d], steps_factor, certify))
    frames = [pd.read_parquet(paths[d]) for d in sorted(classes)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def minima_depth_table(best: pd.DataFrame, depths: pd.DataFrame, cost_max: float = 0.1) -> pd.DataFrame:
    """`depth_table`'s columns with rank, mse and fitted read from the per-rank minima: a depth's
    rank is the class of its lowest-objective minimum (-1 and NaN where it has none)."""
    rows = []
    for d in depths.itertuples():
        mine = best[best["depth"] == d.depth]
        top = mine.loc[mine["objective"].idxmin()] if not mine.empty else None
        rows.append({"depth": int(d.depth), "rank": int(top["rank_class"]) if top is not None else -1,
                     "mse": float(top["mse"]) if top is not None else float("nan"),
                     "fitted": bool(top is not None and top["mse"] < cost_max), "ranks": d.ranks})
    return pd.DataFrame(rows, columns=["depth", "rank", "mse", "fitted", "ranks"])


def lowest_minima(best: pd.DataFrame) -> pd.DataFrame:
    """Per depth, the `best_minima` row of lowest objective: the class that wins there. A class's
    slope is checked over these rows (MINIMA_RULE): a class's minimum at a depth where another
    class is lower is a start finished away from the class's own basin (e.g. rank 3 truncated from
    rank-2 networks at depths 16–24, whose third singular value sinks towards the threshold), not
    a point of the figure's ‖θ‖²-against-L line."""
    if best.empty:
        return best
    return best.loc[best.groupby("depth")["objective"].idxmin()].reset_index(drop=True)


def crossings(best: pd.DataFrame, lam: float) -> list[dict]:
    """For each pair of rank classes (k, k+1) with minima at two or more common depths: the
    crossing depth predicted by TASK_RULE, L* = (MSE_k − MSE_{k+1})/λ + R⁽¹⁾_k − R⁽¹⁾_{k+1}
    (MSE: the mean of each class's minima over the common depths; R⁽¹⁾_k: the mean of ‖θ‖² − k·L,
    the intercept of the class's minima with slope k), against the observed one: the pair of
    consecutive common depths between which the lower-objective class changes from k+1 to k
    (None if it never does)."""
    out = []
    for k in sorted(best["rank_class"].unique()):
        a = best[best["rank_class"] == k].set_index("depth")
        b = best[best["rank_class"] == k + 1].set_index("depth")
        common = sorted(set(a.index) & set(b.index))
        if len(common) < 2:
            continue
        a, b = a.loc[common], b.loc[common]
        d = np.asarray(common, dtype=float)
        r1_a = float((a["param_norm_sq"] - k * d).mean())
        r1_b = float((b["param_norm_sq"] - (k + 1) * d).mean())
        mse_a, mse_b = float(a["mse"].mean()), float(b["mse"].mean())
        lower = (a["objective"] < b["objective"]).to_numpy()
        observed = next(([common[i], common[i + 1]] for i in range(len(common) - 1) if not lower[i] and lower[i + 1]), None)
        out.append({"ranks": [int(k), int(k) + 1], "depths": [int(x) for x in common], "mse": [mse_a, mse_b],
                    "r1": [r1_a, r1_b], "predicted": (mse_a - mse_b) / lam + r1_a - r1_b, "observed": observed})
    return out


def minima_by_depth(best: pd.DataFrame) -> dict[int, list[dict]]:
    """Per depth: each class's minimum {rank, start, source, objective, param_norm_sq, mse, verdict}."""
    verdict = best["cert_verdict"] if "cert_verdict" in best else pd.Series([None] * len(best), index=best.index)
    return {int(d): [{"rank": int(r.rank_class), "start": r.start, "source": r.source, "objective": float(r.objective),
                      "param_norm_sq": float(r.param_norm_sq), "mse": float(r.mse), "verdict": verdict[i]}
                     for i, r in group.iterrows()]
            for d, group in best.groupby("depth")}


def representative_trials(runs: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """`n` networks for panel (b): per rank class (most populous first) the lowest-objective
    network at its class's median depth; the remaining slots go to further depths (spread over
    the sweep) not yet shown. Returned sorted by depth."""
    live = runs[~runs["diverged"].astype(bool)]
    picked: list = []
    classes = live.groupby("rank").size().sort_values(ascending=False, kind="stable").index
    for rank in classes:
        group = live[live["rank"] == rank]
        median = sorted(group["depth"].unique())[len(group["depth"].unique()) // 2]
        picked.append(group[group["depth"] == median]["objective"].idxmin())
        if len(picked) == n:
            break
    shown = set(live.loc[picked, "depth"])
    rest = [d for d in sorted(live["depth"].unique()) if d not in shown]
    for depth in [rest[i] for i in np.linspace(0, len(rest) - 1, min(n - len(picked), len(rest))).round().astype(int)] if rest else []:
        picked.append(live[live["depth"] == depth]["objective"].idxmin())
    return live.loc[picked].sort_values("depth")


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), executor=None,
        workers: int | None = None, **options) -> dict:
    """Run (or resume) the sweep of `preset`, then fit, plot and judge it; `options` replace fields of the Preset.

    `overrides` (``key=value``, as ``bnrank sweep --set``) change the sweep's base config, e.g.
    ``["device=cuda"]``; `executor` runs its groups (default: `workers` local processes, the
    preset's own number unless given; see `bnrank.run_sweep`).

    Returns the summary written to ``summary.json``:
        preset, lam, threshold, cost_max, mse_reduction, loss_rule, rank_rule, fit_rule,
        slope_rule, minor_fraction (TASK_RULE) and minor_scale (the c it sets on this task draw);
        minima_rule (MINIMA_RULE);
        depths: per depth {depth, rank, mse, fitted, ranks} (`depth_table`), rank_by_minima and
        minima: per rank class {rank, start, source, objective, param_norm_sq, mse, verdict}
        (`minima_by_depth`; verdict null without certificates);
        minima_classes: per rank class of the minima {rank, n_depths, slope, checked_fit,
        checked_slope} (`fit_rank_classes` of the `lowest_minima`); crossings: `crossings`;
        rank_classes: per rank class {rank, depths, n_networks, slope, slope_stderr, intercept,
        intercept_stderr (the affine fit), expansion_slope, expansion_slope_stderr,
        expansion_intercept, r2_coef, r2_coef_stderr (with R⁽²⁾/L), checked_fit, checked_slope
        (SLOPE_RULE; all from `fit_rank_classes`), r1_lower_bound,
        r1_lower_bound_jac}: r1_lower_bound = the largest
        2·log|Jf(x)|₊ over the class's networks and analyzed inputs, with |·|₊ over the top
        `rank` singular values (`r1_at_rank`); r1_lower_bound_jac = the largest of analyze's
        network.r1_lower_bound (|·|₊ over the numerically nonzero singular values, jac_rank of
        them) among the class's networks whose jac_rank equals the class rank (null if none);
        acceptance: see `acceptance`, of the ranks by minima (`minima_depth_table`) and the
        minima's fits; acceptance_by_networks: the same of the networks as trained (RANK_RULE);
        n_networks, n_diverged, fig1b_trials (cell ids), sweep (directory), wall_time_s.
    """
    if workers is not None:
        options = options | {"workers": workers}
    spec = resolve_preset("fig1", PRESETS, preset, options, hidden=HIDDEN_PRESETS)
    start = time.perf_counter()
    out = Path(out)
    result = run_sweep(sweep_spec(spec), out / "sweep", workers=spec.workers, threads=spec.threads, progress=progress,
                       overrides=list(overrides), executor=executor)
    runs = network_table(result)
    depths = depth_table(runs, spec.cost_max)
    fits = fit_rank_classes(runs)
    trials = representative_trials(runs)
    minima = rank_minima_rows(result, depths, out / "minima", spec.minima_steps_factor, spec.minima_certify,
                              spec.workers)
    best = best_minima(minima)
    by_minima = minima_depth_table(best, depths, spec.cost_max)
    minima_fits = fit_rank_classes(lowest_minima(best).assign(rank=lambda b: b["rank_class"]))
    per_depth = minima_by_depth(best)
    depth_records = [row | {"rank_by_minima": int(m["rank"]), "minima": per_depth.get(row["depth"], [])}
                     for row, m in zip(depths.to_dict(orient="records"), by_minima.to_dict(orient="records"))]
    summary = {
        "preset": preset,
        "lam": spec.lam,
        "threshold": RANK_THRESHOLD,
        "cost_max": spec.cost_max,
        "mse_reduction": spec.mse_reduction,
        "loss_rule": LOSS_RULE if spec.mse_reduction == "mean" else "objective = (1/N)Σ‖f(x_i) − y_i‖² + lam·‖θ‖²",
        "rank_rule": RANK_RULE,
        "fit_rule": FIT_RULE,
        "slope_rule": SLOPE_RULE,
        "minima_rule": MINIMA_RULE,
        "minor_fraction": spec.minor_fraction,
        "minor_scale": make_task(result.config(runs["cell_id"].iloc[0]).task).metadata["minor_scale"],
        "depths": depth_records,
        "rank_classes": rank_classes(runs, fits),
        "minima_classes": [{"rank": int(f["rank"]), "n_depths": int(f["n_depths"]), "slope": _num(f["slope"]),
                            "checked_fit": f["checked_fit"], "checked_slope": _num(f["checked_slope"])}
                           for f in minima_fits.to_dict(orient="records")],
        "crossings": crossings(best, spec.lam),
        "acceptance": acceptance(by_minima, minima_fits, TRUE_RANK, spec.min_range, spec.slope_tol, spec.cost_max),
        "acceptance_by_networks": acceptance(depths, fits, TRUE_RANK, spec.min_range, spec.slope_tol, spec.cost_max),
        "n_networks": len(runs),
        "n_diverged": int(runs["diverged"].astype(bool).sum()),
        "fig1b_trials": trials["cell_id"].tolist(),
        "sweep": "sweep",
        "wall_time_s": time.perf_counter() - start,
    }
    live = runs[~runs["diverged"].astype(bool)]
    colors = rank_colors(list(runs["rank"]) + list(best["rank_class"]))
    figures = {"fig1a": plot_norm_vs_depth(live, fits, spec.cost_max, colors, best if not best.empty else None)}
    if not trials.empty:  # every network diverged: no spectra to show
        figures["fig1b"] = plot_trial_spectra(result.layers, trials, RANK_THRESHOLD, colors)
    write_outputs(out, summary, figures, {"runs": runs, "rank_minima": minima})
    _print_tables(summary, out)
    return summary


def rank_classes(runs: pd.DataFrame, fits: pd.DataFrame) -> list[dict]:
    """The summary's rank_classes entries (see `run`), ascending rank."""
    live = runs[~runs["diverged"].astype(bool)]
    numeric = ["slope", "slope_stderr", "intercept", "intercept_stderr", "expansion_slope", "expansion_slope_stderr",
               "expansion_intercept", "r2_coef", "r2_coef_stderr", "checked_slope"]
    classes = []
    for fit in fits.to_dict(orient="records"):
        members = live[live["rank"] == fit["rank"]]
        exact = members[members["jac_rank"] == fit["rank"]]["r1_lower_bound"]
        classes.append({
            "rank": int(fit["rank"]),
            "depths": sorted(int(d) for d in members["depth"].unique()),
            "n_networks": int(fit["n_networks"]),
            **{name: _num(fit[name]) for name in numeric},
            "checked_fit": fit["checked_fit"],
            "r1_lower_bound": _num(members["r1_at_rank"].max()),
            "r1_lower_bound_jac": _num(exact.max()) if not exact.empty else None,
        })
    return classes


def _num(value) -> float | None:
    """A finite float, or None (JSON null) for NaN."""
    value = float(value)
    return value if np.isfinite(value) else None


def _fmt(value, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def _print_tables(summary: dict, out: Path) -> None:
    """Per-depth ranks, then per-rank-class fits, then the acceptance criteria."""
    console = Console()
    table = Table(title=f"Figure 1 (depth sweep, λ = {summary['lam']:g}): {out}", box=box.SIMPLE_HEAD)
    for name in ("L", "rank", "train cost", "ranks of all seeds"):
        table.add_column(name, justify="right")
    for row in summary["depths"]:
        mark = "" if row["fitted"] else " (x)"
        table.add_row(str(row["depth"]), str(row["rank"]), f"{row['mse']:.3g}{mark}", " ".join(map(str, row["ranks"])))
    console.print(table)
    classes = Table(title="Rank classes: ‖θ‖² ≈ slope·L + intercept (affine) and ≈ k·L + R⁽¹⁾ + R⁽²⁾/L; "
                          "* = the fit the slope check reads (SLOPE_RULE; classes with enough depths); R⁽¹⁾ ≥: max 2 log|Jf(x)|₊", box=box.SIMPLE_HEAD)
    for name in ("rank", "depths", "nets", "affine slope", "k, + R⁽²⁾/L", "R⁽²⁾", "R⁽¹⁾ ≥"):
        classes.add_column(name, justify="right")
    slope_check = next(c for c in summary["acceptance"]["criteria"] if c["name"] == "slope_equals_rank")
    checked_ranks = {int(rank) for rank in slope_check["value"]}  # int keys, or str ones read back from JSON
    for c in summary["rank_classes"]:
        read = c["rank"] in checked_ranks
        star = {fit: "*" if read and c["checked_fit"] == fit else "" for fit in ("affine", "expansion")}
        slope = f"{_fmt(c['slope'], '.2f')}±{_fmt(c['slope_stderr'], '.2f')}{star['affine']}"
        expansion = f"{_fmt(c['expansion_slope'], '.2f')}±{_fmt(c['expansion_slope_stderr'], '.2f')}{star['expansion']}"
        r2 = f"{_fmt(c['r2_coef'], '.0f')}±{_fmt(c['r2_coef_stderr'], '.0f')}"
        classes.add_row(str(c["rank"]), " ".join(map(str, c["depths"])), str(c["n_networks"]), slope, expansion, r2,
                        _fmt(c["r1_lower_bound"], ".3g"))
    console.print(classes)
    minima = Table(title="Per-rank minima (MINIMA_RULE): objective of each rank class's best minimum, "
                         "* = lowest; ‖θ‖² and verdict of the certificate", box=box.SIMPLE_HEAD)
    for name in ("L", "rank by minima", "class: objective (‖θ‖², verdict)"):
        minima.add_column(name, justify="right")
    for row in summary["depths"]:
        cells = [f"{m['rank']}: {m['objective']:.4g}{'*' if m['rank'] == row['rank_by_minima'] else ''} "
                 f"({m['param_norm_sq']:.3g}, {m['verdict'] or '–'})" for m in row["minima"]]
        minima.add_row(str(row["depth"]), str(row["rank_by_minima"]), "; ".join(cells))
    console.print(minima)
    for c in summary["crossings"]:
        seen = "never" if c["observed"] is None else f"between L = {c['observed'][0]} and {c['observed'][1]}"
        console.print(f"rank {c['ranks'][1]} → {c['ranks'][0]}: crossing predicted at L ≈ {c['predicted']:.1f} "
                      f"(ΔMSE/λ = {(c['mse'][0] - c['mse'][1]) / summary['lam']:.1f}, R⁽¹⁾ {c['r1'][0]:.2f} vs "
                      f"{c['r1'][1]:.2f}), observed {seen}", highlight=False)
    print_checks(console, [(f"{c['statement']}: {c['value']}", c["held"]) for c in summary["acceptance"]["criteria"]])
    console.print(f"time {summary['wall_time_s']:.0f} s, {summary['n_networks']} networks ({summary['n_diverged']} diverged)")
