"""Leaky ResNets over effective depth (Jacot & Kaiser 2024, docs/theory.md §6).

    bnrank reproduce leaky-resnet [--preset quick|paper] [--out DIR]

The paper's teacher task (`task.kind teacher`: x ~ N(0, I_30), y = h(g(x)) through a 3-dim
code, so k* = 3) is learned by Leaky ResNets of depth L and width w at several effective depths
L̃ with uniform steps ρ_ℓ = 1/L, and at the largest L̃ also with adaptive steps
(train.adaptive_steps). Each (variant, L̃) trains `members` seeds as one ensemble with Adam
(a cosine schedule). Every trained net is measured by `bnrank.measure.leaky_measurements` on
its training set. Writes into `out` (staged and renamed into place: whole or absent):

    runs/{variant}-Lt{L̃}/        the trained runs (bnrank.load_run reads them)
    layers.parquet, network.parquet   the measurement tables of every run (columns variant,
                                  effective_depth added), metrics.parquet the training curves
    jumps.png/.svg                relative jump against the layer position, per L̃
    hamiltonian.png/.svg          −(2/L̃)H along the layers and against L̃, with k*
    spectra.png/.svg              representation spectra along the layers at the largest L̃
    adaptive.png/.svg             uniform vs adaptive steps at the largest L̃
    summary.json                  see `run`
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from bnrank.atomic import staged_dir
from bnrank.config import RunConfig, override, validate
from bnrank.errors import ConfigError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, torch_threads, write_outputs
from bnrank.measure.leaky import leaky_measurements
from bnrank.plots.leaky import plot_adaptive, plot_hamiltonian, plot_jumps, plot_representation_spectra
from bnrank.runs import train

K_STAR = 3
NEG2H_TOL = 1.0
"""Check: the member-median −(2/L̃)H at the largest L̃ is within NEG2H_TOL of k* = 3."""
SEPARATION = 2.0
"""Check: at the largest L̃ the mean jump of the outer layers (first and last quarter) is at
least SEPARATION times the mean jump of the middle half (a fast-slow-fast profile)."""


@dataclass(frozen=True)
class Preset:
    """`members` seeds per (variant, L̃) of a depth-`depth`, width-`width` Leaky ResNet on the
    30 → 3 → 30 teacher with `n_train` points, λ = `lam` (the paper's λ of λ/(2L̃)Σρ‖W̃‖²),
    `steps` Adam steps at peak `lr` (cosine to lr/100), init scale `init_scale`; adaptive
    steps every `adapt_every` steps at rate `adapt_rate` at the L̃ of `adaptive_depths` (empty:
    the largest L̃; the last one is compared in summary.json and adaptive.png); `threads` torch
    threads; the rank threshold of the representations `threshold` (relative to the largest)."""

    effective_depths: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    depth: int = 20
    width: int = 100
    n_train: int = 1000
    members: int = 2
    lam: float = 0.002
    steps: int = 20000
    lr: float = 3e-3
    init_scale: float = 0.3
    adapt_every: int = 100
    adapt_rate: float = 0.5
    threads: int | None = 1
    threshold: float = 0.1
    task_seed: int = 0
    adaptive_depths: tuple[float, ...] = field(default=())


PRESETS: dict[str, Preset] = {
    # Seconds: a smoke test of the pipeline (tests/test_leaky_experiment.py), not a result.
    "tiny": Preset(effective_depths=(1.0, 4.0), depth=4, width=32, n_train=40, members=1, steps=60, adapt_every=20),
    # Minutes on one CPU core: smaller width, N and depth, the paper's task.
    "quick": Preset(effective_depths=(1.0, 2.0, 4.0, 8.0), depth=10, width=40, n_train=300, members=1, steps=5000),
    # The paper's sizes: N = 1000, width 100, L = 20.
    "paper": Preset(),
}
HIDDEN_PRESETS = {"tiny"}


def run_config(p: Preset, effective_depth: float, adaptive: bool) -> dict:
    """The run config of one (L̃, variant) of a preset (a dict for `bnrank.train`)."""
    train_cfg = {"lam": p.lam, "log_every": max(p.steps // 50, 1),
                 "phases": [{"optimizer": "adam", "steps": p.steps, "lr": p.lr, "schedule": "cosine", "final_lr_factor": 0.01}]}
    if adaptive:
        train_cfg["adaptive_steps"] = {"every": p.adapt_every, "rate": p.adapt_rate}
    return {
        "seed": 0,
        "members": p.members,
        "task": {"kind": "teacher", "d_in": 30, "rank": K_STAR, "d_out": 30, "n_train": p.n_train, "n_test": p.n_train,
                 "seed": p.task_seed},
        "model": {"kind": "leaky-resnet", "depth": p.depth, "width": p.width, "effective_depth": effective_depth,
                  "init_scale": p.init_scale},
        "train": train_cfg,
    }


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), **options) -> dict:
    """Train, measure and plot every (variant, L̃) of `preset`; `options` replace Preset fields,
    `overrides` (``key=value``, as ``--set``) change every run config.

    Returns the summary written to summary.json: preset, spec, k_star; runs: one entry per
    (variant, L̃, member) with objective, mse, test_mse, param_norm_sq (R(θ)), train_time_s (of
    its ensemble), neg2h (layer-mean −(2/L̃)H), hamiltonian_spread, bottleneck_rank,
    max_jump_ratio, outer_over_middle_jump; checks (computed from the tables):
    neg2h_near_k_star (largest L̃, within NEG2H_TOL), bottleneck_rank_is_k_star (largest L̃,
    every member), jumps_separate_timescales (largest L̃, SEPARATION), adaptive_evens_jumps
    (max/min jump ratio lower with adaptive steps, every member), and passed; adaptive:
    objective and time of uniform vs adaptive steps at the largest L̃; wall_time_s.
    """
    spec = resolve_preset("leaky-resnet", PRESETS, preset, options, hidden=HIDDEN_PRESETS)
    if not spec.effective_depths or min(spec.effective_depths) <= 0:
        raise ConfigError("leaky-resnet: effective_depths must be a non-empty list of values > 0")
    largest = max(spec.effective_depths)
    adaptive_depths = spec.adaptive_depths or (largest,)
    variants = [("uniform", lt) for lt in spec.effective_depths] + [("adaptive", lt) for lt in adaptive_depths]
    configs = {(v, lt): validate(RunConfig, override(run_config(spec, lt, v == "adaptive"), list(overrides)),
                                 source=f"leaky-resnet preset {preset!r}") for v, lt in variants}
    start = time.perf_counter()
    out = Path(out)
    layers, networks, metrics = [], [], []
    with torch_threads(spec.threads), staged_dir(out, overwrite=True) as stage:
        for (variant, lt), cfg in configs.items():
            trained = train(cfg, out=stage / "runs" / f"{variant}-Lt{lt:g}", progress=progress)
            model = trained.model.to(device="cpu")
            tables = leaky_measurements(model, trained.task.x_train, threshold=spec.threshold, k_star=K_STAR)
            tag = {"variant": variant, "effective_depth": lt}
            layers.append(tables["layers"].assign(**tag))
            net = tables["network"].assign(**tag)
            members = pd.DataFrame(trained.summary["members"])
            net["objective"], net["mse"], net["test_mse"] = members.objective, members.mse, members.test_mse
            net["train_time_s"] = trained.summary["wall_time_s"]
            net["outer_over_middle_jump"] = _outer_over_middle(tables["layers"], spec.depth)
            networks.append(net)
            metrics.append(trained.metrics.assign(**tag))
        layers_df, network_df = pd.concat(layers, ignore_index=True), pd.concat(networks, ignore_index=True)
        metrics_df = pd.concat(metrics, ignore_index=True)
        figures = {
            "jumps": plot_jumps(layers_df),
            "hamiltonian": plot_hamiltonian(layers_df, network_df, K_STAR),
            "spectra": plot_representation_spectra(layers_df, largest),
            "adaptive": plot_adaptive(layers_df, metrics_df, adaptive_depths[-1]),
        }
        summary = _summary(spec, network_df, largest, adaptive_depths[-1]) | {
            "preset": preset, "spec": _spec_dict(spec), "wall_time_s": time.perf_counter() - start}
        write_outputs(stage, summary, figures, {"layers": layers_df, "network": network_df, "metrics": metrics_df})
    _print(summary, out)
    return summary


def _outer_over_middle(layers: pd.DataFrame, depth: int) -> np.ndarray:
    """Per member: mean jump of the first and last quarter of the layers over that of the middle half."""
    q = max(depth // 4, 1)
    out = []
    for _, m in layers[layers.layer > 0].groupby("member"):
        j = m.sort_values("layer").jump.to_numpy()
        outer = np.concatenate([j[:q], j[-q:]]).mean()
        middle = j[q:-q].mean() if depth > 2 * q else np.nan
        out.append(outer / middle)
    return np.asarray(out)


def _summary(spec: Preset, network: pd.DataFrame, largest: float, adaptive_lt: float) -> dict:
    cols = ["variant", "effective_depth", "member", "objective", "mse", "test_mse", "param_norm_sq", "train_time_s",
            "neg2h", "hamiltonian_spread", "bottleneck_rank", "max_jump_ratio", "outer_over_middle_jump"]
    runs = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in network[cols].to_dict("records")]
    top = network[(network.variant == "uniform") & (network.effective_depth == largest)]
    uni = network[(network.variant == "uniform") & (network.effective_depth == adaptive_lt)].sort_values("member")
    ada = network[(network.variant == "adaptive") & (network.effective_depth == adaptive_lt)].sort_values("member")
    checks = {
        "neg2h_near_k_star": bool(abs(float(top.neg2h.median()) - K_STAR) <= NEG2H_TOL),
        "bottleneck_rank_is_k_star": bool((top.bottleneck_rank == K_STAR).all()),
        "jumps_separate_timescales": bool((top.outer_over_middle_jump >= SEPARATION).all()),
        "adaptive_evens_jumps": bool((ada.max_jump_ratio.to_numpy() < uni.max_jump_ratio.to_numpy()).all()),
    }
    adaptive = {
        "effective_depth": adaptive_lt,
        "uniform_objective": uni.objective.tolist(), "adaptive_objective": ada.objective.tolist(),
        "uniform_time_s": float(uni.train_time_s.iloc[0]), "adaptive_time_s": float(ada.train_time_s.iloc[0]),
        "uniform_max_jump_ratio": uni.max_jump_ratio.tolist(), "adaptive_max_jump_ratio": ada.max_jump_ratio.tolist(),
    }
    return {"k_star": K_STAR, "neg2h_tol": NEG2H_TOL, "separation": SEPARATION, "runs": runs, "adaptive": adaptive,
            "checks": checks, "passed": all(checks.values())}


def _spec_dict(spec: Preset) -> dict:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def _print(summary: dict, out: Path) -> None:
    console = Console()
    console.print(f"Leaky ResNet over L̃: {out}")
    for r in summary["runs"]:
        console.print(f"  {r['variant']:8s} L̃={r['effective_depth']:<5g} member {r['member']}: objective {r['objective']:.4g}"
                      f"  −(2/L̃)H {r['neg2h']:.3g}  bottleneck rank {r['bottleneck_rank']}  H spread {r['hamiltonian_spread']:.3g}"
                      f"  outer/middle jump {r['outer_over_middle_jump']:.3g}  {r['train_time_s']:.0f} s")
    print_checks(console, summary["checks"])
    console.print(f"time {summary['wall_time_s']:.0f} s")
