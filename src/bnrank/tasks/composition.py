"""The rank-k composition task of docs/theory.md §5 (Figure 1).

z ~ N(0, I_m) (m = latent_dim); x = g(z) ∈ R^{d_in}; y = h(z_1, c·z_2, ..., c·z_k) ∈ R^{d_out}
(c = `minor_scale`, 1 by default; c < 1 leaves only a small part ε of y's variance outside
E[y | z_1], the best function of z_1 alone, which sets the depth where a rank-1 fit overtakes the
rank-k one: docs/theory.md §2's tradeoff with the fit error; at c = 0.08, ε is 0.013–0.039 over
task seeds 0–5 with N = 150; `minor_fraction` ε fixes ε on the training rows instead and c
follows, `minor_scale_for`), where g and
h are random one-hidden-layer ReLU networks of width `hidden`: first-layer weights N(0, 1/fan_in)
(times `g_scale` for g), biases N(0, bias_std²), second layer N(0, 1/hidden), no output bias.
x and y are standardized per coordinate with the training set's mean and std; then Gaussian
noise of std `noise` is added to y. The target factors through k dimensions, so its
bottleneck rank is at most k (``metadata["true_rank"]``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from bnrank.errors import ConfigError
from bnrank.tasks.base import TaskData

NODES_PER_DIM = 96
QUADRATURE_NODES = 4096
"""E[y | z_1] integrates over z_2..z_k on a Gauss–Hermite tensor grid of min(NODES_PER_DIM,
QUADRATURE_NODES^(1/(k−1))) nodes per latent (at least 3)."""
CHUNK_POINTS = 2**18
"""Grid points h is evaluated on at once (bounds the memory of `unexplained_by_z1`)."""


def _random_relu_net(gen: torch.Generator, d_in: int, hidden: int, d_out: int, bias_std: float, scale: float = 1.0):
    w1 = torch.randn(hidden, d_in, generator=gen, dtype=torch.float64) * (scale / d_in**0.5)
    b1 = torch.randn(hidden, generator=gen, dtype=torch.float64) * bias_std
    w2 = torch.randn(d_out, hidden, generator=gen, dtype=torch.float64) / hidden**0.5
    return lambda z: torch.relu(z @ w1.T + b1) @ w2.T


def _standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-12)
    return (train - mean) / std, (test - mean) / std


def _minor_weights(rank: int, c: float) -> Tensor:
    weights = torch.full((rank,), c, dtype=torch.float64)
    weights[0] = 1.0
    return weights


def unexplained_by_z1(h, rank: int, z: Tensor, c: float) -> float:
    """ε(c): the fraction of the variance of y = h(z_1, c·z_2, ..., c·z_k) (k = `rank`) over the rows
    of z (n, ≥ k) that E[y | z_1] leaves, averaged over output coordinates: the mean squared error
    of the best function of z_1 on the per-coordinate standardized y. E[y | z_1] integrates h over
    z_2..z_k ~ N(0, 1) on a Gauss–Hermite tensor grid (QUADRATURE_NODES)."""
    per_dim = max(3, min(NODES_PER_DIM, round(QUADRATURE_NODES ** (1 / (rank - 1)))))
    nodes, weights = np.polynomial.hermite_e.hermegauss(per_dim)
    grid = torch.cartesian_prod(*[torch.tensor(nodes)] * (rank - 1)).reshape(-1, rank - 1)
    w = torch.cartesian_prod(*[torch.tensor(weights / weights.sum())] * (rank - 1)).reshape(-1, rank - 1).prod(1)
    rows = max(1, CHUNK_POINTS // grid.shape[0])
    cond = torch.cat([_conditional_mean(h, z1, c * grid, w) for z1 in z[:, :1].split(rows)])
    y = h(z[:, :rank] * _minor_weights(rank, c))
    var = ((y - y.mean(0)) ** 2).sum(0).clamp_min(1e-300)
    return float((((y - cond) ** 2).sum(0) / var).mean())


def _conditional_mean(h, z1: Tensor, grid: Tensor, w: Tensor) -> Tensor:
    """Σ_j w_j h(z_1, grid_j) for each row of z1 (n, 1): (n, d_out)."""
    n, g = z1.shape[0], grid.shape[0]
    points = torch.cat([z1.repeat_interleave(g, 0), grid.repeat(n, 1)], 1)
    return (h(points).reshape(n, g, -1) * w[None, :, None]).sum(1)


def minor_scale_for(h, rank: int, z: Tensor, fraction: float) -> float:
    """The c in (e⁻³⁰, 1] with `unexplained_by_z1`(h, rank, z, c) = `fraction` (Brent's method on
    log c; ε(c) rises from 0 with c); ConfigError if even c = 1 leaves less than `fraction` unexplained."""
    at_one = unexplained_by_z1(h, rank, z, 1.0)
    if at_one < fraction:
        raise ConfigError(f"task.minor_fraction {fraction:g} is out of reach: with minor_scale 1 only "
                          f"{at_one:.3g} of y's variance lies outside E[y | z_1]")
    log_c = brentq(lambda t: unexplained_by_z1(h, rank, z, float(np.exp(t))) - fraction, -30.0, 0.0, xtol=1e-12)
    return float(np.exp(log_c))


def sample_composition(cfg, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, float]:
    """The raw draw of a `CompositionTask` config: latents z (n, latent_dim), x = g(z) (n, d_in),
    y = h(z_1, c·z_2, ..., c·z_k) (n, d_out), float64, n = n_train + n_test (training rows first),
    before standardization and noise, and c (cfg.minor_scale, or `minor_scale_for` the training
    rows when cfg.minor_fraction is set). Drawn from `gen` (advanced), by default a new generator
    seeded with cfg.seed."""
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    g = _random_relu_net(gen, cfg.latent_dim, cfg.hidden, cfg.d_in, cfg.bias_std, cfg.g_scale)
    h = _random_relu_net(gen, cfg.rank, cfg.hidden, cfg.d_out, cfg.bias_std)
    z = torch.randn(cfg.n_train + cfg.n_test, cfg.latent_dim, generator=gen, dtype=torch.float64)
    c = cfg.minor_scale
    if cfg.minor_fraction is not None:
        c = minor_scale_for(h, cfg.rank, z[: cfg.n_train], cfg.minor_fraction)
    return z, g(z), h(z[:, : cfg.rank] * _minor_weights(cfg.rank, c)), c


def composition_task(cfg) -> TaskData:
    """Generate the task described by a `CompositionTask` config (deterministic in cfg.seed)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    _, x, y, c = sample_composition(cfg, gen)
    x_train, x_test = _standardize(x[: cfg.n_train], x[cfg.n_train :])
    y_train, y_test = _standardize(y[: cfg.n_train], y[cfg.n_train :])
    if cfg.noise > 0:
        y_train = y_train + cfg.noise * torch.randn(y_train.shape, generator=gen, dtype=torch.float64)
        y_test = y_test + cfg.noise * torch.randn(y_test.shape, generator=gen, dtype=torch.float64)
    meta = {"kind": "composition", "true_rank": cfg.rank, "latent_dim": cfg.latent_dim, "minor_scale": c}
    return TaskData(x_train, y_train, x_test, y_test, meta)
