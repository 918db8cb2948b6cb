"""The predecessor paper's rank-recovery figure (ICLR 2023, docs/theory.md §5).

    bnrank reproduce iclr-rank [--preset quick|paper] [--out DIR]

A depth-13 network learns a rank-4 target R⁵⁰ → R⁵⁰ at λ = 0.05/L. Our target (the paper's is
not published): the composition task (`bnrank.tasks.composition`) with rank 4 and
d_in = d_out = 50, x = g(z) for an 8-dim Gaussian latent z, y = h(z₁..z₄). Trained with the
default recipe (`bnrank.training.recipe`); `members` seeds train together as one ensemble. Writes into
`out` (staged and renamed into place, so `out` is whole or absent):

    run/                    the trained run (bnrank.load_run reads it)
    layers.parquet          `bnrank.analyze(model, x_train).layers`
    rank_minima.parquet     the per-rank minima (MINIMA_RULE; docs/columns.md#minima)
    weights.png/.svg        singular values of every W_ℓ against ℓ (threshold 0.1)
    activations.png/.svg    the top singular values of σ(α_ℓ(X)) against ℓ (member 0)
    nonlinearity.png/.svg   ‖σ(α_ℓ) − α_ℓ‖ / ‖α_ℓ‖ against ℓ
    summary.json            see `run`

and prints a per-layer table of member 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from bnrank.atomic import staged_dir
from bnrank.config import RunConfig, override, validate
from bnrank.errors import ConfigError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, torch_threads, write_outputs
from bnrank.measure import analyze
from bnrank.measure.rank_minima import best_minima, depth_minima, mark_best, problem_from_run
from bnrank.plots.iclr import plot_activation_spectra, plot_nonlinearity_impact
from bnrank.plots.spectra import plot_weight_spectra
from bnrank.runs import train
from bnrank.training.recipe import default_init_scale, default_train_config, middle_layer

TRUE_RANK = 4
MIDDLE_RULE = "the middle layer is ℓ = ceil(L/2): its weight W_ℓ and its activations σ(α_ℓ(X))"
MINIMA_RULE = (
    "each member's network with W_ceil(L/2) cut to rank k (or as trained if its rank is k), finished with W_ceil(L/2) "
    "capped at rank k, then uncapped (bnrank.measure.rank_minima); a class's minimum = its lowest-objective finished "
    "start that kept rank k (# singular values of W_ceil(L/2) > 0.1)"
)


@dataclass(frozen=True)
class Preset:
    """What `run` trains: `members` seeds of a depth-`depth`, width-`width` net on the rank-4
    composition task with `n_train` (and `n_test`) points, at λ = lam_times_depth / depth, with
    the recipe's phases of adam_steps, descent_steps and polish_steps (polish: a cap, the stop
    rule ends it); `mse_reduction`: the objective's fit term ("sum" over the 50 outputs, or
    their "mean", bnrank.training.objective); `threads` torch threads (None: torch's default); `analyze_points` training
    inputs go to `bnrank.analyze`; `threshold`: the weight-rank threshold (the paper's 0.1).
    Per-rank minima (`bnrank.measure.rank_minima`): every member's network cut to each rank of
    `minima_ranks` at W_⌈L/2⌉ and finished (the descent phases × `minima_steps_factor`),
    certified if `minima_certify`."""

    depth: int = 13
    width: int = 100
    n_train: int = 500
    n_test: int = 500
    members: int = 1
    lam_times_depth: float = 0.05
    mse_reduction: str = "sum"
    adam_steps: int = 4000
    descent_steps: int = 8000
    polish_steps: int = 12000
    g_scale: float = 1.0
    task_seed: int = 0
    threads: int | None = None
    analyze_points: int = 500
    threshold: float = 0.1
    minima_ranks: tuple[int, ...] = (TRUE_RANK, TRUE_RANK + 1)
    minima_steps_factor: float = 1.0
    minima_certify: bool = True


D_OUT = 50

PRESETS: dict[str, Preset] = {
    # Seconds: a smoke test of the pipeline (tests/test_iclr_rank.py), not a result.
    "tiny": Preset(depth=5, width=12, n_train=40, n_test=20, adam_steps=200, descent_steps=20, polish_steps=20,
                   analyze_points=40, threads=1, minima_certify=False),
    # A few minutes on one CPU core: the paper's depth and λ, smaller width and N.
    "quick": Preset(width=50, n_train=250, n_test=250, adam_steps=3000, descent_steps=3000, polish_steps=3000,
                    analyze_points=250, threads=1),
    # The paper's sizes (depth 13, width 100, N = 500) with the recipe's default phase lengths
    # (79 s on an H100 with --device cuda, results/iclr-rank-paper-h100).
    "paper": Preset(members=4, adam_steps=8000, descent_steps=16000, polish_steps=24000),
}
HIDDEN_PRESETS = {"tiny"}


def run_config(p: Preset) -> dict:
    """The run config of a preset (a dict for `bnrank.train`)."""
    lam = p.lam_times_depth / p.depth
    train_cfg = default_train_config(p.depth, lam, adam_steps=p.adam_steps, descent_steps=p.descent_steps,
                                     polish_steps=p.polish_steps, mse_reduction=p.mse_reduction, d_out=D_OUT)
    return {
        "seed": 0,
        "members": p.members,
        "task": {"kind": "composition", "rank": TRUE_RANK, "latent_dim": 8, "d_in": 50, "d_out": D_OUT,
                 "n_train": p.n_train, "n_test": p.n_test, "g_scale": p.g_scale, "seed": p.task_seed},
        "model": {"depth": p.depth, "width": p.width, "init_scale": default_init_scale(p.depth)},
        "train": train_cfg.model_dump(mode="json", exclude_defaults=True) | {"lam": lam},
    }


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), **options) -> dict:
    """Train, measure and plot the rank-recovery figure for `preset`; `options` replace Preset fields
    and `overrides` (``key=value``, as ``--set``) change its run config, e.g. ``["device=cuda"]``.

    Returns the summary written to ``summary.json`` (lists have one entry per member, layer 1 first):
        preset, config (resolved), lam, true_rank, threshold, middle_rule (MIDDLE_RULE);
        param_norm_sq, param_norm_sq_over_depth (the paper reports ≈ 6), train_mse, test_mse;
        weight_ranks (# singular values of W_ℓ > threshold), act_ranks (of σ(α_ℓ(X)), relative
        threshold), nonlin_impact, per member and layer; mid_weight_rank, mid_act_rank: the
        ranks at the middle layer (MIDDLE_RULE), per member; rank_minima: `compare_minima` of the
        per-rank minima (MINIMA_RULE); checks: {every member's middle weight rank = true rank,
        every member's middle activation rank = true rank, the lowest per-rank minimum has the
        true rank} (computed), passed; wall_time_s, train_time_s.
    """
    spec = resolve_preset("iclr-rank", PRESETS, preset, options, hidden=HIDDEN_PRESETS)
    if spec.depth < 3:
        raise ConfigError(f"iclr-rank: depth must be >= 3 (a hidden middle layer), got {spec.depth}")
    cfg = validate(RunConfig, override(run_config(spec), list(overrides)), source=f"iclr-rank preset {preset!r}")
    start = time.perf_counter()
    out = Path(out)
    with torch_threads(spec.threads), staged_dir(out, overwrite=True) as stage:
        trained = train(cfg, out=stage / "run", progress=progress)
        task = trained.task
        model = trained.model.to(device="cpu", dtype=torch.float64)  # measured on the CPU in float64
        layers = analyze(model, task.x_train[: spec.analyze_points], threshold=spec.threshold).layers
        minima = depth_minima(problem_from_run(trained), spec.depth, spec.minima_ranks, spec.minima_steps_factor,
                              spec.minima_certify)
        summary = _summary(spec, cfg, trained, layers, minima) | {
            "preset": preset, "config": cfg.model_dump(mode="json"),
            "train_time_s": trained.summary["wall_time_s"], "wall_time_s": time.perf_counter() - start,
        }
        figures = {
            "weights": plot_weight_spectra(layers, threshold=spec.threshold,
                                           title=f"Weight spectra, depth {spec.depth}, rank-{TRUE_RANK} target"),
            "activations": plot_activation_spectra(layers),
            "nonlinearity": plot_nonlinearity_impact(layers),
        }
        write_outputs(stage, summary, figures, {"layers": layers, "rank_minima": mark_best(minima)})
    _print_table(summary, layers, out)
    return summary


def compare_minima(minima: pd.DataFrame, ranks: Sequence[int]) -> dict:
    """Which rank class has the lower minimum (MINIMA_RULE), from the finished starts `minima`.

    Returns {classes: per rank of `ranks` {rank, objective, param_norm_sq, mse, verdict, starts,
    left_class} (objective etc. null where every start left the class or diverged), lowest: the
    rank of the lowest minimum (null if none), statement: one line with the numbers}."""
    best = best_minima(minima)
    classes = []
    for k in ranks:
        mine = minima[minima["rank_class"] == k]
        row = best[best["rank_class"] == k]
        top = row.iloc[0] if not row.empty else None
        classes.append({
            "rank": int(k), "starts": len(mine), "left_class": int(mine["left_class"].astype(bool).sum()),
            "objective": float(top["objective"]) if top is not None else None,
            "param_norm_sq": float(top["param_norm_sq"]) if top is not None else None,
            "mse": float(top["mse"]) if top is not None else None,
            "verdict": top["cert_verdict"] if top is not None and "cert_verdict" in top else None,
        })
    found = [c for c in classes if c["objective"] is not None]
    lowest = min(found, key=lambda c: c["objective"]) if found else None
    parts = [f"rank {c['rank']}: {c['objective']:.6f} (‖θ‖² {c['param_norm_sq']:.2f}, mse {c['mse']:.4g})"
             if c["objective"] is not None else f"rank {c['rank']}: none ({c['left_class']} of {c['starts']} starts left the class)"
             for c in classes]
    statement = "; ".join(parts) + (f"; lowest: rank {lowest['rank']}" if lowest else "; no minimum in any class")
    return {"classes": classes, "lowest": lowest["rank"] if lowest else None, "statement": statement}


def _summary(spec: Preset, cfg: RunConfig, trained, layers, minima: pd.DataFrame) -> dict:
    depth = spec.depth
    by_member = [layers[layers["member"] == e].sort_values("layer") for e in range(cfg.members)]
    weight_ranks = [[int(r) for r in m["rank"]] for m in by_member]
    act_ranks = [[int(r) for r in m["act_rank"]] for m in by_member]
    middle = middle_layer(depth) - 1
    mid_w = [ranks[middle] for ranks in weight_ranks]
    mid_a = [ranks[middle] for ranks in act_ranks]
    members = trained.summary["members"]
    comparison = compare_minima(minima, spec.minima_ranks)
    checks = {
        f"middle_weight_rank_is_{TRUE_RANK}": all(r == TRUE_RANK for r in mid_w),
        f"middle_activation_rank_is_{TRUE_RANK}": all(r == TRUE_RANK for r in mid_a),
        f"lowest_minimum_has_rank_{TRUE_RANK}": comparison["lowest"] == TRUE_RANK,
    }
    return {
        "lam": spec.lam_times_depth / depth,
        "true_rank": TRUE_RANK,
        "threshold": spec.threshold,
        "middle_rule": MIDDLE_RULE,
        "param_norm_sq": [m["param_norm_sq"] for m in members],
        "param_norm_sq_over_depth": [m["param_norm_sq"] / depth for m in members],
        "train_mse": [m["mse"] for m in members],
        "test_mse": [m["test_mse"] for m in members],
        "weight_ranks": weight_ranks,
        "act_ranks": act_ranks,
        "nonlin_impact": [[None if v != v else float(v) for v in m["nonlin_impact"]] for m in by_member],
        "mid_weight_rank": mid_w,
        "mid_act_rank": mid_a,
        "minima_rule": MINIMA_RULE,
        "rank_minima": comparison,
        "checks": checks,
        "passed": all(checks.values()),
    }


def _print_table(summary: dict, layers, out: Path) -> None:
    """Member 0's per-layer ranks, top singular values and nonlinearity impact, then the headline numbers."""
    console = Console()
    table = Table(title=f"Rank recovery (ICLR 2023), depth {len(summary['weight_ranks'][0])}: {out}", box=box.SIMPLE_HEAD)
    for name in ("ℓ", "rank W", "s₁..s₅ of W_ℓ", "act rank", "nonlin impact"):
        table.add_column(name, justify="left" if name.startswith("s") else "right")
    rows = layers[layers["member"] == 0].sort_values("layer")
    for row, impact in zip(rows.itertuples(), summary["nonlin_impact"][0]):
        table.add_row(str(row.layer), str(row.rank), " ".join(f"{s:.2f}" for s in row.singular_values[:5]),
                      str(row.act_rank), "–" if impact is None else f"{impact:.3f}")
    console.print(table)
    norms = " ".join(f"{v:.2f}" for v in summary["param_norm_sq_over_depth"])
    mses = " ".join(f"{v:.3g}" for v in summary["train_mse"])
    console.print(f"‖θ‖²/L = {norms} (paper ≈ 6)   train mse {mses}   time {summary['wall_time_s']:.0f} s")
    console.print(f"per-rank minima: {summary['rank_minima']['statement']}")
    print_checks(console, summary["checks"])
