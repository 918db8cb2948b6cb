"""The paper's Figure 2: symmetry learning (docs/theory.md §5).

    bnrank reproduce fig2 [--preset quick|paper] [--out DIR]

Trains one network on the symmetry task (`bnrank.tasks.symmetry`: targets = the rotation
invariants along gradient-descent paths of a potential invariant about an axis w, BN-rank 2),
then writes into `out` (staged and renamed into place, so `out` is whole or absent):

    run/                 the trained run directory (bnrank.load_run reads it)
    layers.parquet       `bnrank.analyze(model, x_train).layers` (spectra, ranks, ...)
    fig2a.png/.svg       singular values of every W_ℓ against ℓ (log scale from 1e-4), threshold 0.1
    fig2b.png/.svg       α_p (p = projection_layer) of GD paths on the top-2 principal directions
                         of α_p(x_train), with the number of crossings between the path images
    fig2c.png/.svg       ‖α_q(x₀) − α_q(x)‖ (q = distance_layer) for x on the plane w⊥
    summary.json         see `run`

and prints a per-layer table. Acceptance (the checks in summary.json): the bottleneck has rank
exactly 2 and contains the middle layer, its orbit-collapse ratios are below `collapse_max`, and
the projected path images do not cross.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from bnrank.atomic import staged_dir
from bnrank.config import RunConfig, override, per_member, validate
from bnrank.errors import ConfigError
from bnrank.experiments import resolve_preset
from bnrank.experiments.output import print_checks, write_outputs
from bnrank.measure import analyze
from bnrank.measure.symmetry import count_crossings, orbit_collapse
from bnrank.plots.fig2 import plot_orbit_distance, plot_path_images
from bnrank.plots.spectra import plot_weight_spectra
from bnrank.runs import train
from bnrank.tasks.symmetry import TRUE_RANK, RotationDynamics, sample_inputs
from bnrank.training.recipe import apply_recipe

BOTTLENECK_RULE = (
    "k = the smallest rank (# singular values > threshold) among the interior weight matrices "
    "W_2..W_{L-1}; the bottleneck is the longest run of consecutive interior layers of rank k "
    "(the first one on ties)"
)


@dataclass(frozen=True)
class Preset:
    """What `run` trains and measures.

    config: the run config (see bnrank.config.RunConfig; its task must be a symmetry task).
    projection_layer: p of panel (b); distance_layer: q of panel (c) (1-based, α_p = the
    pre-activation after W_p). n_paths GD paths start on circles of `path_radii` in the quotient
    half-plane (h, r), at interleaved polar angles and random azimuths about w.
    orbit_points base inputs (drawn like the training inputs), orbit_samples random rotations
    each, give the orbit-collapse ratios. Panel (c) uses a grid × grid lattice on the plane
    wᵀx = 0 spanning ±task.scale, and x₀ at plane coordinates `x0`. `seed` drives the analysis'
    randomness (path azimuths, orbit base points and angles).
    """

    config: dict
    projection_layer: int = 6
    distance_layer: int = 2
    n_paths: int = 12
    path_radii: tuple[float, ...] = (0.5, 1.2)
    orbit_points: int = 128
    orbit_samples: int = 8
    grid: int = 101
    x0: tuple[float, float] = (0.9, 0.0)
    threshold: float = 0.1
    collapse_max: float = 0.05
    seed: int = 0


def _config(depth: int, width: int, lam: float, n_train: int, **recipe) -> dict:
    """A symmetry-task run trained by the default recipe (`bnrank.training.recipe.apply_recipe`:
    Adam with λ annealed from above, then heavy-ball GD at curvature-scaled steps, then a polish
    with the stop rule); `recipe` goes to `default_train_config` (e.g. phase lengths)."""
    config = {
        "seed": 0,
        "members": 1,
        "task": {"kind": "symmetry", "axis": [0.0, 0.0, 1.0], "kappa": 0.5, "step": 0.1, "path_length": 10,
                 "n_train": n_train, "n_test": 500, "distribution": "ball", "scale": 1.5, "seed": 0},
        "model": {"depth": depth, "width": width},
        "train": {"lam": lam, "log_every": 500},
    }
    return apply_recipe(config, **recipe)


PRESETS: dict[str, Preset] = {
    # 3–6 min on 2 CPU cores, all three checks pass (README.md, "Reproductions"); phases shortened
    # from the recipe's depth-25 defaults to fit 15 minutes on 2 cores.
    "quick": Preset(config=_config(depth=25, width=64, lam=3e-3, n_train=300, adam_steps=10000, descent_steps=6000, polish_steps=4000)),
    # The paper's network (depth 25, width 200, λ = 0.0002) with the recipe's default phases for
    # its depth (75k steps: ~0.08 s each on one CPU core, 146 s in all on an H100, results/fig2-paper-h100).
    "paper": Preset(config=_config(depth=25, width=200, lam=2e-4, n_train=500)),
}


def run(preset: str, out: Path, progress: bool | None = None, overrides: Sequence[str] = (), **options) -> dict:
    """Train, measure and plot Figure 2 for `preset`; `options` replace fields of the Preset and
    `overrides` (``key=value``, as ``--set``) change its run config, e.g. ``["device=cuda"]``.
    The measurements run on the CPU in float64 whatever the training device and dtype.

    Returns the summary written to ``summary.json``:
        weight_ranks: # singular values > threshold of every W_ℓ, layer 1 first;
        bottleneck_layers (1-based), bottleneck_rank, bottleneck_rule: see BOTTLENECK_RULE;
        orbit_collapse: per layer (α_1..α_L), mean distance between representations of points on
        one orbit ÷ mean distance between points on different orbits (`orbit_collapse`);
        bottleneck_orbit_collapse_max: its largest value in the bottleneck (None without one);
        path_crossings: crossings between the projected path images at projection_layer;
        quotient_crossings: the same for the exact invariants (h, r) of the paths (0 means the
        chosen paths do not cross in the true 2-d quotient);
        projection_explained_variance: fraction of the variance of α_p(x_train) in its top 2
        principal directions;
        train_mse, test_mse, param_norm_sq; checks (each acceptance test) and passed (all);
        preset, config (resolved), wall_time_s, train_time_s.
    """
    spec = resolve_preset("fig2", PRESETS, preset, options)
    cfg = validate(RunConfig, override(spec.config, list(overrides)), source=f"fig2 preset {preset!r}")
    depth = cfg.model.depth
    if cfg.task.kind != "symmetry":
        raise ConfigError(f"fig2 preset {preset!r}: task.kind must be 'symmetry', got {cfg.task.kind!r}")
    for name in ("projection_layer", "distance_layer"):
        if not 1 <= getattr(spec, name) < depth:
            raise ConfigError(f"fig2: {name} = {getattr(spec, name)} must be a hidden layer 1..{depth - 1}")
    start = time.perf_counter()
    out = Path(out)
    with staged_dir(out, overwrite=True) as stage:
        trained = train(cfg, out=stage / "run", progress=progress)
        result = _measure(spec, trained)
        result["summary"] |= {
            "preset": preset, "config": cfg.model_dump(mode="json"),
            "train_time_s": trained.summary["wall_time_s"], "wall_time_s": time.perf_counter() - start,
        }
        write_outputs(stage, result["summary"], result["figures"], {"layers": result["layers"]})
    _print_table(result["summary"], result["layers"], out)
    return result["summary"]


def _measure(spec: Preset, trained) -> dict:
    """All measurements and figures of one trained run: {"summary", "layers", "figures"}."""
    cfg, task = trained.config, trained.task
    net = trained.model.select([0]).to(device="cpu", dtype=torch.float64)
    dynamics = RotationDynamics.from_config(cfg.task)
    gen = torch.Generator().manual_seed(spec.seed)
    lam = per_member(cfg.train.lam, cfg.members)[0]

    layers = analyze(net, task.x_train, threshold=spec.threshold, Y=task.y_train, lam=lam,
                     mse_reduction=cfg.train.mse_reduction).layers
    ranks = [int(r) for r in layers["rank"]]
    bottleneck, k = bottleneck_layers(ranks)

    def rotations(x, n, g):
        return dynamics.orbit(x, 2 * math.pi * torch.rand(x.shape[0], n, generator=g, dtype=x.dtype))

    base = sample_inputs(cfg.task, spec.orbit_points, gen)
    collapse = orbit_collapse(net.preactivations, base, rotations, n_orbit=spec.orbit_samples, generator=gen)[:, 0]

    paths = dynamics.path(path_starts(dynamics, spec.n_paths, spec.path_radii, gen))  # (P, T+1, 3)
    p = spec.projection_layer
    with torch.no_grad():
        reference = net.preactivations(task.x_train)[p - 1][0]
        images = net.preactivations(paths.reshape(-1, 3))[p - 1][0]
    mean = reference.mean(0)
    _, s, vt = torch.linalg.svd(reference - mean, full_matrices=False)
    explained = float(s[:2].square().sum() / s.square().sum())
    curves = ((images - mean) @ vt[:2].T).reshape(paths.shape[0], paths.shape[1], 2).numpy()
    crossings = count_crossings(list(curves))
    quotient_crossings = count_crossings(list(dynamics.invariants(paths).numpy()))

    q, extent = spec.distance_layer, cfg.task.scale
    grid, _ = dynamics.plane_grid(spec.grid, extent)
    u, v = dynamics.plane_basis()
    x0 = spec.x0[0] * u + spec.x0[1] * v
    with torch.no_grad():
        alpha = net.preactivations(torch.cat([x0[None], grid.reshape(-1, 3)]))[q - 1][0]
    distance = (alpha[1:] - alpha[0]).norm(dim=-1).reshape(spec.grid, spec.grid).numpy()

    member = trained.summary["members"][0]
    worst = max((float(collapse[layer - 1]) for layer in bottleneck), default=None)
    checks = {
        f"bottleneck_rank_is_{TRUE_RANK}_and_contains_the_middle_layer": k == TRUE_RANK and (cfg.model.depth + 1) // 2 in bottleneck,
        f"bottleneck_orbit_collapse_below_{spec.collapse_max:g}": worst is not None and worst < spec.collapse_max,
        "no_path_crossings": crossings == 0,
    }
    summary = {
        "weight_ranks": ranks,
        "bottleneck_layers": bottleneck,
        "bottleneck_rank": k,
        "bottleneck_rule": BOTTLENECK_RULE,
        "threshold": spec.threshold,
        "orbit_collapse": collapse.tolist(),
        "bottleneck_orbit_collapse_max": worst,
        "path_crossings": crossings,
        "quotient_crossings": quotient_crossings,
        "projection_layer": p,
        "projection_explained_variance": explained,
        "distance_layer": q,
        "n_paths": paths.shape[0],
        "train_mse": member["mse"],
        "test_mse": member["test_mse"],
        "param_norm_sq": member["param_norm_sq"],
        "checks": checks,
        "passed": all(checks.values()),
    }
    background = ((reference - mean) @ vt[:2].T).numpy()
    figures = {
        "fig2a": _clip_small(
            plot_weight_spectra(layers, threshold=spec.threshold, title=f"Weight spectra: {k} outliers in the bottleneck (layers {_span(bottleneck)})"),
            largest=max(float(sv[0]) for sv in layers["singular_values"]),
        ),
        "fig2b": plot_path_images(list(curves), background, layer=p, crossings=crossings),
        "fig2c": plot_orbit_distance(distance, extent, spec.x0, layer=q),
    }
    return {"summary": summary, "layers": layers, "figures": figures}


def bottleneck_layers(ranks: list[int]) -> tuple[list[int], int]:
    """(bottleneck layers, 1-based; their rank k) from the ranks of W_1..W_L (BOTTLENECK_RULE).

    Networks of depth < 3 have no interior layer: ([], 0).
    """
    interior = ranks[1:-1]
    if not interior:
        return [], 0
    k = min(interior)
    best: list[int] = []
    current: list[int] = []
    for layer, rank in enumerate(interior, start=2):
        current = current + [layer] if rank == k else []
        if len(current) > len(best):
            best = current
    return best, k


def path_starts(dynamics: RotationDynamics, n: int, radii: tuple[float, ...], gen: torch.Generator) -> torch.Tensor:
    """n starting points (n, 3): on each circle ‖x‖ = ρ of `radii` in turn, points at polar angles
    φ from w spread over (0, π) and interleaved between circles, each at a random azimuth."""
    per_circle = math.ceil(n / len(radii))
    hr = []
    for j, radius in enumerate(radii):
        phi = math.pi * (torch.arange(per_circle, dtype=torch.float64) + (j + 1) / (len(radii) + 1)) / per_circle
        hr.append(radius * torch.stack([phi.cos(), phi.sin()], dim=1))
    hr = torch.cat(hr)[:n]
    psi = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    u, v = dynamics.plane_basis()
    across = psi.cos()[:, None] * u + psi.sin()[:, None] * v
    return hr[:, :1] * dynamics.axis + hr[:, 1:] * across


def _clip_small(fig, largest: float, bottom: float = 1e-4):
    """Show singular values from `bottom` to a little above the `largest`: dead neurons leave
    singular values down to ~1e-40, which would squash the outliers against the top."""
    fig.axes[0].set_ylim(bottom, 2 * largest)
    return fig


def _span(layers: list[int]) -> str:
    return f"{layers[0]}–{layers[-1]}" if layers else "none"


def _print_table(summary: dict, layers, out: Path) -> None:
    """Per-layer ranks, top singular values and orbit collapse, then the headline numbers."""
    console = Console()
    table = Table(title=f"Figure 2 (symmetry learning): {out}", box=box.SIMPLE_HEAD)
    for name in ("ℓ", "rank", "s₁ s₂ s₃ of W_ℓ", "orbit collapse", ""):
        table.add_column(name, justify="left" if name.startswith("s") else "right")
    bottleneck = set(summary["bottleneck_layers"])
    for layer, rank, sv, ratio in zip(layers["layer"], summary["weight_ranks"], layers["singular_values"], summary["orbit_collapse"]):
        mark = "bottleneck" if layer in bottleneck else ""
        table.add_row(str(layer), str(rank), " ".join(f"{s:.3f}" for s in sv[:3]), f"{ratio:.4f}", mark)
    console.print(table)
    console.print(
        f"path crossings at layer {summary['projection_layer']}: {summary['path_crossings']} "
        f"(exact quotient: {summary['quotient_crossings']})   train mse {summary['train_mse']:.4g}   "
        f"test mse {summary['test_mse']:.4g}   time {summary['wall_time_s']:.0f} s"
    )
    print_checks(console, summary["checks"])
