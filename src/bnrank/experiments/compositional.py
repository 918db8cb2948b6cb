"""Compositional scaling laws: test error against N on f* = h∘g (Jacot, Choi & Wen 2024; docs/theory.md §6).

    bnrank reproduce compositional-scaling [--preset quick|paper] [--out DIR]

The task is `matern-composition` (bnrank.tasks.matern): g: R^d_in → R^k and h: R^k → R^d_out
exact Matérn-GP draws of smoothness ν_g and ν_h (the paper's d_in 15, k 3, d_out 20). For every
training size N, (ν_g, ν_h) pair, task seed (one GP draw each) and method, the method is fit
at every λ of its grid and the λ of lowest validation error is kept (LAMBDA_RULE). Methods:

    deep       an L2-regularized ReLU net of depth `deep_depth`, trained by the default recipe
    shallow    the same at depth 2 (one hidden layer of `shallow_width`), same recipe and protocol
    krr-ν      kernel ridge regression with the Matérn-ν kernel (ν = 0.5: Laplace), length scale
               the median pairwise distance of the training inputs (bnrank.measure.kernel_ridge)

The nets train through the sweep engine (``out/sweep``, resumable, local workers or Ray): one
sweep case per (method, pair, N, λ), the task seeds as its grid. Kernel ridge and the nets'
validation and test errors and fibre collapse are computed here, one cached JSON file per KRR
cell and per net (``out/cache/krr``, ``out/cache/nets``, written atomically), so an interrupted run resumes where it
stopped. Then writes into `out`:

    scaling.png/.svg    test error against N (log-log), one panel per (ν_g, ν_h), with the fitted
                        power law and rate ± standard error of each method
    rates.png/.svg      the fitted rates of every method and pair against the theory's rates
    errors.parquet      one row per (pair, N, seed, method, λ): val_error, test_error, selected
    exponents.parquet   one row per (pair, method): the power-law fit (bnrank.measure.scaling)
    bottleneck.parquet  one row per selected net: middle weight rank, representation rank and
                        fibre collapse at the middle layer, and the collapse of g itself
    summary.json        see `run`

Conventions:

- ERROR_RULE: test error = (1/(n·d_out)) Σ_i ‖f(x_i) − y_i‖² over the test rows; y is
  standardized with the training set's statistics, so 1 is about the error of predicting 0.
- LAMBDA_RULE: every task is drawn with N training rows, ⌈val_fraction·N⌉ validation rows and
  `n_test` test rows (one GP draw, rows i.i.d., so the split is seeded by the task seed). Each
  method is fit on the N training rows at each λ of its grid; the λ with the lowest validation
  error (ties: the larger λ) is selected and that fit's test error is reported (no refit).
  The same rule for every method; the grids differ because each λ means something else.
- THEORY_RULE: the predicted rates (exponents of the squared test error, error ~ N^(−rate)):
  deep = min(1, 2ν_g/d_in, 2ν_h/k), shallow (kernel ridge, depth-2 net) =
  min(1, 2·min(ν_g, ν_h)/d_in). The deep rate is "g-dominated" where ν_g/d_in < ν_h/k and
  "h-dominated" where ν_g/d_in > ν_h/k; the transition is at ν_g* = d_in·ν_h/k.
- FIT_RULE: rate = −b of the least-squares fit log(test error) = a + b·log N over every (N,
  seed) point of the selected fits (`fit_power_law`), b_stderr its standard error.
- BOTTLENECK_RULE: the bottleneck of a net is its middle layer ⌈L/2⌉: the rank of W_⌈L/2⌉
  (# singular values > 0.1, `mid_rank`), the rank of α_⌈L/2⌉(X) (analyze's preact_rank) and
  the fibre collapse of α_⌈L/2⌉ (bnrank.measure.fibres) on the first `analyze_points` test rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from bnrank.atomic import write_json
from bnrank.config import MaternCompositionTask, validate
from bnrank.errors import ConfigError, DataError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, write_outputs
from bnrank.measure.fibres import fibre_collapse
from bnrank.measure.kernel_ridge import fit_kernel_ridge, median_distance
from bnrank.measure.scaling import fit_power_law
from bnrank.plots.compositional import plot_rates, plot_scaling
from bnrank.sweep import SweepResult, run_sweep
from bnrank.tasks.matern import matern_composition_draw
from bnrank.training.recipe import default_init_scale, default_train_config, middle_layer

ERROR_RULE = "test error = mean over test rows and output coordinates of (f(x) - y)^2, y standardized by the training set"
LAMBDA_RULE = (
    "each method is fit on the N training rows at every lambda of its grid; the lambda with the lowest error on "
    "ceil(val_fraction*N) validation rows (drawn with the task, i.i.d.) is selected (ties: the larger) and that fit's "
    "test error reported, no refit; the same rule for every method"
)
THEORY_RULE = (
    "predicted rate of the squared test error: deep = min(1, 2 nu_g/d_in, 2 nu_h/k), shallow (kernel ridge, depth-2 net) "
    "= min(1, 2 min(nu_g, nu_h)/d_in); g-dominated where nu_g/d_in < nu_h/k, h-dominated where >, transition at "
    "nu_g* = d_in nu_h / k"
)
FIT_RULE = "rate = -b of the least-squares fit log(test error) = a + b log N over every (N, seed) point of the selected fits"
BOTTLENECK_RULE = (
    "the bottleneck is the middle layer ceil(L/2): rank of W (# singular values > 0.1), rank of its pre-activations "
    "(analyze's preact_rank) and their fibre collapse on the first analyze_points test rows"
)
NETS = ("deep", "shallow")


@dataclass(frozen=True)
class Preset:
    """What `run` trains and how it judges the result.

    sizes: the training sizes N; nus: the (ν_g, ν_h) pairs; seeds: task seeds (one GP draw per
    (N, pair, seed)); d_in, rank (k), d_out, length_g, length_h, noise: the task
    (MaternCompositionTask); val_fraction, n_test: LAMBDA_RULE's validation and test rows.
    deep_depth × deep_width and 2 × shallow_width: the nets, with their λ grids net_lams
    (the "sum" objective (1/N)Σ‖f − y‖² + λ‖θ‖²) trained by the default recipe with
    (adam, descent, polish) = `steps`; init_seed: the nets' init seed. krr_nus: the Matérn
    smoothness of each kernel-ridge baseline, krr_lams its λ grid. analyze_points: rows for
    analyze (training rows, in the sweep) and the fibre collapse (test rows); near_fraction: the
    along-fibre pairs (bnrank.measure.fibres). advantage_min: the predicted deep/shallow rate
    ratio from which a check expects the deep rate to be larger. device, workers, threads: the
    sweep's (RunConfig.device; local processes and torch threads each).
    """

    sizes: tuple[int, ...]
    nus: tuple[tuple[float, float], ...]
    seeds: tuple[int, ...]
    d_in: int = 15
    rank: int = 3
    d_out: int = 20
    length_g: float = 2.0
    length_h: float = 1.0
    noise: float = 0.0
    val_fraction: float = 0.25
    n_test: int = 1000
    deep_depth: int = 6
    deep_width: int = 48
    shallow_width: int = 256
    net_lams: tuple[float, ...] = (0.01, 0.03, 0.1)
    steps: tuple[int, int, int] = (2000, 500, 500)
    init_seed: int = 0
    krr_nus: tuple[float, ...] = (0.5, 2.5)
    krr_lams: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    analyze_points: int = 256
    near_fraction: float = 0.02
    advantage_min: float = 1.5
    device: str = "cpu"
    workers: int = 2
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # Seconds: a smoke test of the pipeline (tests/test_compositional.py), not a result.
    "tiny": Preset(sizes=(16, 24, 32), nus=((0.5, 2.5), (2.5, 0.5)), seeds=(0,), d_in=4, rank=2, d_out=3, n_test=40,
                   deep_depth=3, deep_width=8, shallow_width=16, net_lams=(0.01, 0.1), steps=(60, 10, 10),
                   krr_nus=(0.5,), krr_lams=(1e-3, 1e-1), analyze_points=16, near_fraction=0.1, workers=1),
    # ≤ 15 min on 2 shared CPU cores (measured: results/compositional-scaling-quick-cpu/README.md): ν_h = 0.5
    # and ν_g across the transition ν_g* = 2.5 (g-dominated, at it, h-dominated).
    "quick": Preset(sizes=(128, 256, 512, 1024, 2048), nus=((0.5, 0.5), (2.5, 0.5), (8.0, 0.5)), seeds=(0, 1)),
    # A GPU or a cluster: N to 8192, both sides of the transition for three ν_h, four draws.
    "paper": Preset(sizes=(256, 512, 1024, 2048, 4096, 8192),
                    nus=tuple((g, h) for h in (0.5, 1.0, 2.0) for g in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)),
                    seeds=(0, 1, 2, 3), deep_depth=8, deep_width=100, shallow_width=1000,
                    net_lams=(0.003, 0.01, 0.03, 0.1), steps=(8000, 4000, 4000), device="auto", threads=None, workers=1),
}
HIDDEN_PRESETS = {"tiny"}


def n_val(p: Preset, n: int) -> int:
    """Validation rows of a task with n training rows: ⌈val_fraction·n⌉."""
    return math.ceil(p.val_fraction * n)


def task_config(p: Preset, n: int, nu_g: float, nu_h: float, seed: int) -> dict:
    """The MaternCompositionTask of one (N, pair, seed): N training rows, then validation and test rows."""
    return {"kind": "matern-composition", "d_in": p.d_in, "rank": p.rank, "d_out": p.d_out, "nu_g": nu_g, "nu_h": nu_h,
            "length_g": p.length_g, "length_h": p.length_h, "n_train": n, "n_test": n_val(p, n) + p.n_test,
            "noise": p.noise, "seed": seed}


def net_shape(p: Preset, method: str) -> tuple[int, int]:
    """(depth, width) of a net method."""
    return (p.deep_depth, p.deep_width) if method == "deep" else (2, p.shallow_width)


def sweep_spec(p: Preset) -> dict:
    """The sweep of the nets: one case per (method, pair, N, λ), the task seeds as the grid.

    Each method's phases are the recipe's at its depth for the largest λ of the grid (so its
    cells share one phase list and batch into one ensemble per (method, pair, N)).
    """
    cases = []
    for method in NETS:
        depth, width = net_shape(p, method)
        train = default_train_config(depth, max(p.net_lams), adam_steps=p.steps[0], descent_steps=p.steps[1],
                                     polish_steps=p.steps[2]).model_dump(mode="json")
        for nu_g, nu_h in p.nus:
            for n in p.sizes:
                for lam in p.net_lams:
                    cases.append({"task.n_train": n, "task.n_test": n_val(p, n) + p.n_test, "task.nu_g": nu_g,
                                  "task.nu_h": nu_h, "model.depth": depth, "model.width": width,
                                  "model.init_scale": default_init_scale(depth), "train.lam": lam,
                                  "train.phases": train["phases"]})
    recipe = default_train_config(p.deep_depth, max(p.net_lams), adam_steps=p.steps[0], descent_steps=p.steps[1],
                                  polish_steps=p.steps[2]).model_dump(mode="json")
    return {
        "name": "compositional-scaling",
        "base": {
            "seed": p.init_seed, "device": p.device,
            "task": task_config(p, p.sizes[0], *p.nus[0], p.seeds[0]),
            "train": {"log_every": recipe["log_every"], "stop": recipe["stop"]},
        },
        "cases": cases,
        "grid": {"task.seed": list(p.seeds)},
        "analyze": True,
        "analyze_points": p.analyze_points,
        "analyze_curvature": False,
    }


# -- predictions and checks ---------------------------------------------------------------------------


def predicted_rates(nu_g: float, nu_h: float, d_in: int, k: int) -> dict:
    """THEORY_RULE for one pair: {deep_rate, shallow_rate, advantage (deep/shallow), regime}."""
    deep = min(1.0, 2 * nu_g / d_in, 2 * nu_h / k)
    shallow = min(1.0, 2 * min(nu_g, nu_h) / d_in)
    g_side, h_side = nu_g / d_in, nu_h / k
    regime = "g-dominated" if g_side < h_side * (1 - 1e-9) else "h-dominated" if g_side > h_side * (1 + 1e-9) else "transition"
    return {"nu_g": nu_g, "nu_h": nu_h, "deep_rate": deep, "shallow_rate": shallow, "advantage": deep / shallow,
            "regime": regime, "nu_g_transition": d_in * nu_h / k}


def _rate(exponents: pd.DataFrame, nu_g: float, nu_h: float, method: str) -> tuple[float, float]:
    """(rate, stderr) of a method at a pair; (nan, nan) when not fitted."""
    row = exponents[(exponents["nu_g"] == nu_g) & (exponents["nu_h"] == nu_h) & (exponents["method"] == method)]
    if row.empty:
        return float("nan"), float("nan")
    return float(-row["b"].iloc[0]), float(row["b_stderr"].iloc[0])


def _compare(a: tuple[float, float], b: tuple[float, float]) -> dict:
    """a's rate minus b's, its standard error (independent fits), and z = difference / stderr."""
    diff, se = a[0] - b[0], math.hypot(a[1], b[1])
    return {"difference": _num(diff), "stderr": _num(se), "z": _num(diff / se) if se > 0 else None}


def _beats(comparison: dict, z_min: float = 2.0) -> bool:
    return comparison["z"] is not None and comparison["z"] > z_min


def checks(exponents: pd.DataFrame, p: Preset) -> list[dict]:
    """The checks of the summary, computed from the fitted rates (FIT_RULE) and THEORY_RULE.

    Each is {"name", "statement", "held", "value"}; a check with no pair it applies to is not
    held (nothing was shown). The kernel baseline of a pair is the kernel method with the
    largest fitted rate there.
    """
    kernels = [m for m in exponents["method"].unique() if m.startswith("krr")]
    predicted = [predicted_rates(g, h, p.d_in, p.rank) for g, h in p.nus]
    favoured = [q for q in predicted if q["advantage"] >= p.advantage_min]
    vs_kernel, vs_shallow = {}, {}
    for q in favoured:
        deep = _rate(exponents, q["nu_g"], q["nu_h"], "deep")
        best = max((_rate(exponents, q["nu_g"], q["nu_h"], m) for m in kernels), key=lambda r: r[0] if np.isfinite(r[0]) else -np.inf,
                   default=(float("nan"), float("nan")))
        key = _pair_key(q["nu_g"], q["nu_h"])
        vs_kernel[key] = {"deep_rate": _num(deep[0]), "kernel_rate": _num(best[0]), **_compare(deep, best)}
        vs_shallow[key] = {"deep_rate": _num(deep[0]), "shallow_rate": _num(_rate(exponents, q["nu_g"], q["nu_h"], "shallow")[0]),
                           **_compare(deep, _rate(exponents, q["nu_g"], q["nu_h"], "shallow"))}
    rises = {}
    for nu_h in sorted({h for _, h in p.nus}):
        row = sorted((q for q in predicted if q["nu_h"] == nu_h), key=lambda q: q["nu_g"])
        for lo, hi in zip(row, row[1:]):
            if hi["deep_rate"] >= p.advantage_min * lo["deep_rate"]:
                a, b = _rate(exponents, hi["nu_g"], nu_h, "deep"), _rate(exponents, lo["nu_g"], nu_h, "deep")
                rises[f"{_pair_key(lo['nu_g'], nu_h)} -> {_pair_key(hi['nu_g'], nu_h)}"] = {
                    "predicted": [lo["deep_rate"], hi["deep_rate"]], "measured": [_num(b[0]), _num(a[0])], **_compare(a, b)}
    return [
        {"name": "deep_rate_exceeds_kernel_where_predicted",
         "statement": (f"where the predicted deep rate is >= {p.advantage_min:g}x the shallow one, the deep net's fitted rate "
                       "exceeds the best kernel ridge rate by more than 2 standard errors"),
         "held": bool(vs_kernel) and all(_beats(v) for v in vs_kernel.values()), "value": vs_kernel},
        {"name": "deep_rate_exceeds_shallow_net_where_predicted",
         "statement": (f"where the predicted deep rate is >= {p.advantage_min:g}x the shallow one, the deep net's fitted rate "
                       "exceeds the depth-2 net's by more than 2 standard errors"),
         "held": bool(vs_shallow) and all(_beats(v) for v in vs_shallow.values()), "value": vs_shallow},
        {"name": "deep_rate_rises_with_nu_g_where_g_dominates",
         "statement": (f"between pairs of one nu_h, consecutive in nu_g, whose predicted deep rates differ by >= {p.advantage_min:g}x "
                       "(the g-dominated side), the smoother g has the larger fitted deep rate by more than 2 standard errors"),
         "held": bool(rises) and all(_beats(v) for v in rises.values()), "value": rises},
    ]


def transition(exponents: pd.DataFrame, p: Preset) -> list[dict]:
    """Per ν_h: the pairs in ν_g order with the predicted regime and rates and the fitted rate
    ± stderr of every method; `plateau`: for consecutive pairs with equal predicted deep rates
    (both past the transition), the fitted deep rate's change and its z."""
    methods = sorted(exponents["method"].unique(), key=_method_order)
    report = []
    for nu_h in sorted({h for _, h in p.nus}):
        row = sorted((predicted_rates(g, h, p.d_in, p.rank) for g, h in p.nus if h == nu_h), key=lambda q: q["nu_g"])
        pairs = []
        for q in row:
            fitted = {m: dict(zip(("rate", "stderr"), map(_num, _rate(exponents, q["nu_g"], nu_h, m)))) for m in methods}
            pairs.append({**q, "fitted": fitted})
        plateau = {}
        for lo, hi in zip(row, row[1:]):
            if math.isclose(lo["deep_rate"], hi["deep_rate"]):
                plateau[f"{_pair_key(lo['nu_g'], nu_h)} -> {_pair_key(hi['nu_g'], nu_h)}"] = _compare(
                    _rate(exponents, hi["nu_g"], nu_h, "deep"), _rate(exponents, lo["nu_g"], nu_h, "deep"))
        report.append({"nu_h": nu_h, "nu_g_transition": p.d_in * nu_h / p.rank, "pairs": pairs, "plateau": plateau})
    return report


def _pair_key(nu_g: float, nu_h: float) -> str:
    return f"nu_g={nu_g:g},nu_h={nu_h:g}"


def _num(value) -> float | None:
    """A finite float, or None (JSON null)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _method_order(method: str) -> tuple[int, str]:
    return ({"deep": 0, "shallow": 1}.get(method, 2), method)


# -- evaluation (kernel ridge and the nets' validation/test errors), cached per cell -------------------


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


class _Tasks:
    """Builds each task (and g on its rows) at most once, only when a missing cell needs it."""

    def __init__(self, p: Preset):
        self.p, self.built = p, {}

    def get(self, config: dict):
        key = _digest(config)
        if key not in self.built:
            self.built = {}  # one task in memory at a time: the draws are evaluated task by task
            cfg = validate(MaternCompositionTask, config, source="compositional-scaling task")
            self.built[key] = matern_composition_draw(cfg)
        return self.built[key]


def _split(p: Preset, task):
    """(x_val, y_val, x_test, y_test) of a task (LAMBDA_RULE): the first ⌈val_fraction·N⌉ rows
    after the training rows validate, the rest test."""
    m = n_val(p, task.x_train.shape[0])
    return task.x_test[:m], task.y_test[:m], task.x_test[m:], task.y_test[m:]


def _cached(path: Path, compute) -> dict:
    """The JSON at `path`, or compute() written there atomically (a corrupt file is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        record = compute()
        write_json(path, record)
        return record


def krr_cell(p: Preset, task, kernel_nu: float) -> dict:
    """Kernel ridge on one task at every λ of `krr_lams`: {lams, val_errors, test_errors,
    length_scale} (ERROR_RULE; a λ whose system is not positive definite gets NaN)."""
    x_val, y_val, x_test, y_test = _split(p, task)
    ell = median_distance(task.x_train)
    val, test = [], []
    for lam in p.krr_lams:
        try:
            model = fit_kernel_ridge(task.x_train, task.y_train, lam, kernel_nu, ell)
        except DataError:
            val.append(float("nan"))
            test.append(float("nan"))
            continue
        val.append(model.error(x_val, y_val) / p.d_out)
        test.append(model.error(x_test, y_test) / p.d_out)
    return {"lams": list(p.krr_lams), "val_errors": val, "test_errors": test, "length_scale": ell}


def net_cell(p: Preset, task, g, model, depth: int) -> dict:
    """A trained net (one-member ensemble) on its task: val_error, test_error (ERROR_RULE) and
    the fibre collapse of every layer's pre-activations α_1..α_L on the first analyze_points
    test rows (`fibre_collapse`), with `g_collapse`, the value for g itself (float64)."""
    x_val, y_val, x_test, y_test = _split(p, task)
    g_test = g[g.shape[0] - x_test.shape[0]:]
    net = model.to(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        val = float((net(x_val)[0] - y_val).square().mean())
        test = float((net(x_test)[0] - y_test).square().mean())
        m = min(p.analyze_points, x_test.shape[0])
        xs, gs = x_test[:m], g_test[:m]
        reps = net.preactivations(xs)
        collapse = [_num(fibre_collapse(a[0], gs, xs, p.near_fraction)) for a in reps]
    return {"val_error": val, "test_error": test, "layer_collapse": collapse,
            "g_collapse": _num(fibre_collapse(gs, gs, xs, p.near_fraction)), "depth": depth}


def evaluate(p: Preset, result: SweepResult, cache: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The errors table (one row per (pair, N, seed, method, λ)) and the net records by cell
    id, computing only what `cache` lacks, task by task."""
    tasks = _Tasks(p)
    finished = set(result.runs["cell_id"]) if not result.runs.empty else set()
    by_task: dict[str, list] = {}
    for cell in result.cells:
        if cell.cell_id in finished:
            by_task.setdefault(_digest(cell.config.task.model_dump(mode="json")), []).append(cell)
    rows, nets = [], {}
    for nu_g, nu_h in p.nus:
        for n in p.sizes:
            for seed in p.seeds:
                config = validate(MaternCompositionTask, task_config(p, n, nu_g, nu_h, seed)).model_dump(mode="json")
                base = {"nu_g": nu_g, "nu_h": nu_h, "n": n, "seed": seed}
                for kernel_nu in p.krr_nus:
                    key = _digest({"task": config, "kernel_nu": kernel_nu, "lams": list(p.krr_lams),
                                   "n_val": n_val(p, n), "n_test": p.n_test})
                    rec = _cached(cache / "krr" / f"{key}.json", lambda: krr_cell(p, tasks.get(config)[0], kernel_nu))
                    for lam, v, t in zip(rec["lams"], rec["val_errors"], rec["test_errors"]):
                        rows.append({**base, "method": f"krr-{kernel_nu:g}", "lam": lam, "val_error": v, "test_error": t, "cell_id": None})
                for cell in by_task.get(_digest(config), []):
                    depth = cell.config.model.depth
                    key = _digest({"cell": cell.cell_id, "n_val": n_val(p, n), "analyze_points": p.analyze_points,
                                   "near_fraction": p.near_fraction})
                    rec = _cached(cache / "nets" / f"{key}.json",
                                  lambda: net_cell(p, *tasks.get(config), result.model(cell.cell_id), depth))
                    method = "shallow" if depth == 2 else "deep"
                    nets[cell.cell_id] = rec
                    rows.append({**base, "method": method, "lam": float(cell.config.train.lam), "val_error": rec["val_error"],
                                 "test_error": rec["test_error"], "cell_id": cell.cell_id})
    return mark_selected(pd.DataFrame(rows)), nets


def mark_selected(errors: pd.DataFrame) -> pd.DataFrame:
    """Add `selected`: per (pair, N, seed, method) the row of lowest finite val_error, ties to
    the larger λ (LAMBDA_RULE)."""
    errors = errors.copy()
    errors["selected"] = False
    keys = ["nu_g", "nu_h", "n", "seed", "method"]
    for _, group in errors.groupby(keys, sort=False):
        live = group[np.isfinite(group["val_error"].astype(float))]
        if live.empty:
            continue
        best = live.sort_values(["val_error", "lam"], ascending=[True, False], kind="stable").index[0]
        errors.loc[best, "selected"] = True
    return errors


def fit_exponents(selected: pd.DataFrame) -> pd.DataFrame:
    """FIT_RULE per (pair, method): nu_g, nu_h, method, a, b, a_stderr, b_stderr, points, rate
    (= −b); a group that cannot be fitted (fewer than 3 points or 2 sizes, an error ≤ 0) gets NaN."""
    rows = []
    for (nu_g, nu_h, method), g in selected.groupby(["nu_g", "nu_h", "method"], sort=True):
        try:
            fit = fit_power_law(g["n"].to_numpy(float), g["test_error"].to_numpy(float))._asdict()
        except DataError:
            fit = {"a": np.nan, "b": np.nan, "a_stderr": np.nan, "b_stderr": np.nan, "points": len(g)}
        rows.append({"nu_g": nu_g, "nu_h": nu_h, "method": method, **fit, "rate": -fit["b"]})
    return pd.DataFrame(rows, columns=["nu_g", "nu_h", "method", "a", "b", "a_stderr", "b_stderr", "points", "rate"])


def bottleneck_table(p: Preset, result: SweepResult, errors: pd.DataFrame, nets: dict[str, dict]) -> pd.DataFrame:
    """One row per selected net (BOTTLENECK_RULE): pair, n, seed, method, lam, depth, mid_rank,
    mid_preact_rank, mid_collapse, g_collapse, true_rank."""
    chosen = errors[errors["selected"] & errors["cell_id"].notna()]
    runs = result.runs.set_index("cell_id")
    layers = result.layers.set_index(["cell_id", "layer"]) if not result.layers.empty else None
    rows = []
    for r in chosen.itertuples():
        rec, depth = nets[r.cell_id], int(runs.loc[r.cell_id, "depth"])
        mid = middle_layer(depth)
        rows.append({"nu_g": r.nu_g, "nu_h": r.nu_h, "n": r.n, "seed": r.seed, "method": r.method, "lam": r.lam,
                     "cell_id": r.cell_id, "depth": depth, "true_rank": p.rank,
                     "mid_rank": int(runs.loc[r.cell_id, "mid_rank"]),
                     "mid_preact_rank": int(layers.loc[(r.cell_id, mid), "preact_rank"]) if layers is not None else -1,
                     "mid_collapse": rec["layer_collapse"][mid - 1], "g_collapse": rec["g_collapse"]})
    return pd.DataFrame(rows)


def bottleneck_report(table: pd.DataFrame) -> list[dict]:
    """Per (pair, method) at each N: the middle weight ranks and representation ranks of the
    selected nets (seed order), the median fibre collapse and the median collapse of g itself."""
    report = []
    for (nu_g, nu_h, method), g in table.groupby(["nu_g", "nu_h", "method"], sort=True):
        by_n = []
        for n, at in g.groupby("n", sort=True):
            at = at.sort_values("seed")
            by_n.append({"n": int(n), "mid_ranks": at["mid_rank"].astype(int).tolist(),
                         "mid_preact_ranks": at["mid_preact_rank"].astype(int).tolist(),
                         "mid_collapse_median": _num(at["mid_collapse"].astype(float).median()),
                         "g_collapse_median": _num(at["g_collapse"].astype(float).median())})
        report.append({"nu_g": nu_g, "nu_h": nu_h, "method": method, "true_rank": int(g["true_rank"].iloc[0]), "by_n": by_n})
    return report


# -- the experiment ---------------------------------------------------------------------------------


def _validate(p: Preset) -> None:
    """Bad presets fail here, before anything is written."""
    if len(p.sizes) < 2 or len(p.sizes) * len(p.seeds) < 3:
        raise ConfigError("compositional-scaling: a rate needs at least 2 sizes and 3 (size, seed) points")
    if not p.nus or not p.seeds or not p.net_lams or not p.krr_lams:
        raise ConfigError("compositional-scaling: nus, seeds, net_lams and krr_lams must be non-empty")
    if p.deep_depth < 3:
        raise ConfigError(f"compositional-scaling: deep_depth must be >= 3 (deeper than the shallow net), got {p.deep_depth}")
    if not 0 < p.val_fraction < 1 or p.n_test < 1 or p.analyze_points < 3:
        raise ConfigError("compositional-scaling: need 0 < val_fraction < 1, n_test >= 1 and analyze_points >= 3")
    for nu_g, nu_h in p.nus:
        for n in p.sizes:
            validate(MaternCompositionTask, task_config(p, n, nu_g, nu_h, p.seeds[0]), source=f"compositional-scaling N={n}")


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), executor=None,
        workers: int | None = None, **options) -> dict:
    """Run (or resume) the sweep and the baselines of `preset`, then fit, plot and judge them.

    `options` replace Preset fields; `overrides` (``key=value``, as ``bnrank sweep --set``)
    change the sweep's base config, e.g. ``["device=cuda"]`` (the cases set the task's sizes
    and ν, the model and the training phases, so those keys are the preset's); `executor`
    runs its groups (default: `workers` local processes, the preset's unless given).

    Returns the summary written to ``summary.json``: preset, settings (the resolved Preset),
    error_rule, lambda_rule, theory_rule, fit_rule, bottleneck_rule; exponents: per (pair,
    method) the fit (a, b, stderrs, points, rate); predicted: THEORY_RULE per pair; checks
    (`checks`) and passed (all held); transition (`transition`); bottleneck
    (`bottleneck_report`); n_networks, n_diverged, selected_lams (per method, how often each λ
    was selected), sweep (directory), sweep_time_s, evaluation_time_s, wall_time_s.
    """
    if workers is not None:
        options = options | {"workers": workers}
    spec = resolve_preset("compositional-scaling", PRESETS, preset, options, hidden=HIDDEN_PRESETS)
    _validate(spec)
    start = time.perf_counter()
    out = Path(out)
    result = run_sweep(sweep_spec(spec), out / "sweep", workers=spec.workers, threads=spec.threads, progress=progress,
                       overrides=list(overrides), executor=executor)
    swept = time.perf_counter()
    errors, nets = evaluate(spec, result, out / "cache")
    evaluated = time.perf_counter()
    selected = errors[errors["selected"]]
    exponents = fit_exponents(selected)
    predicted = pd.DataFrame([predicted_rates(g, h, spec.d_in, spec.rank) for g, h in spec.nus])
    bottleneck = bottleneck_table(spec, result, errors, nets)
    criteria = checks(exponents, spec)
    methods = sorted(errors["method"].unique(), key=_method_order)
    summary = {
        "preset": preset,
        "settings": asdict(spec),
        "error_rule": ERROR_RULE, "lambda_rule": LAMBDA_RULE, "theory_rule": THEORY_RULE, "fit_rule": FIT_RULE,
        "bottleneck_rule": BOTTLENECK_RULE,
        "exponents": [{k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()} for row in exponents.to_dict(orient="records")],
        "predicted": predicted.to_dict(orient="records"),
        "checks": criteria,
        "passed": all(c["held"] for c in criteria),
        "transition": transition(exponents, spec),
        "bottleneck": bottleneck_report(bottleneck) if not bottleneck.empty else [],
        "n_networks": int(len(result.runs)),
        "n_diverged": int(result.runs["diverged"].astype(bool).sum()) if not result.runs.empty else 0,
        "selected_lams": {m: {f"{lam:g}": int(c) for lam, c in selected[selected["method"] == m]["lam"].value_counts().sort_index().items()}
                          for m in methods},
        "sweep": "sweep",
        "sweep_time_s": swept - start,
        "evaluation_time_s": evaluated - swept,
    }
    figures = {"scaling": plot_scaling(selected, exponents, methods), "rates": plot_rates(exponents, predicted, methods)}
    summary["wall_time_s"] = time.perf_counter() - start
    write_outputs(out, summary, figures, {"errors": errors, "exponents": exponents, "bottleneck": bottleneck})
    _print_tables(summary, out)
    return summary


def _fmt(rate: float | None, se: float | None) -> str:
    return "–" if rate is None else f"{rate:.3f} ± {se:.3f}" if se is not None else f"{rate:.3f}"


def _print_tables(summary: dict, out: Path) -> None:
    """Fitted rates per pair and method beside the predicted ones, the bottleneck, then the checks."""
    console = Console()
    table = Table(title=f"Compositional scaling (rate = −d log err / d log N): {out}", box=box.SIMPLE_HEAD)
    methods = sorted({e["method"] for e in summary["exponents"]}, key=_method_order)
    for name in ("ν_g", "ν_h", "regime", "predicted deep", "predicted shallow", *methods):
        table.add_column(name, justify="right")
    for q in summary["predicted"]:
        fitted = {e["method"]: e for e in summary["exponents"] if e["nu_g"] == q["nu_g"] and e["nu_h"] == q["nu_h"]}
        cells = [_fmt(fitted[m]["rate"], fitted[m]["b_stderr"]) if m in fitted else "–" for m in methods]
        table.add_row(f"{q['nu_g']:g}", f"{q['nu_h']:g}", q["regime"], f"{q['deep_rate']:.3f}", f"{q['shallow_rate']:.3f}", *cells)
    console.print(table)
    for b in summary["bottleneck"]:
        last = b["by_n"][-1]
        console.print(f"  {b['method']:8s} ν_g={b['nu_g']:g} ν_h={b['nu_h']:g} N={last['n']}: W_mid ranks {last['mid_ranks']} "
                      f"(k = {b['true_rank']}), α_mid ranks {last['mid_preact_ranks']}, fibre collapse "
                      f"{_fmt(last['mid_collapse_median'], None)} (g itself {_fmt(last['g_collapse_median'], None)})")
    print_checks(console, [(f"{c['name']}: {json.dumps(c['value'])}", c["held"]) for c in summary["checks"]])
    console.print(f"time {summary['wall_time_s']:.0f} s (sweep {summary['sweep_time_s']:.0f} s), {summary['n_networks']} networks "
                  f"({summary['n_diverged']} diverged)")
