"""The rank-k composition task of docs/theory.md §5 (Figure 1).

z ~ N(0, I_m) (m = latent_dim); x = g(z) ∈ R^{d_in}; y = h(z_1, c·z_2, ..., c·z_k) ∈ R^{d_out}
(c = `minor_scale`, 1 by default; c < 1 leaves only a small part of y outside the best function
of z_1 alone, ≈ 3 % of its variance at c = 0.08, which sets the depth where a rank-1 fit
overtakes the rank-k one: docs/theory.md §2's tradeoff with the fit error), where g and
h are random one-hidden-layer ReLU networks of width `hidden`: first-layer weights N(0, 1/fan_in)
(times `g_scale` for g), biases N(0, bias_std²), second layer N(0, 1/hidden), no output bias.
x and y are standardized per coordinate with the training set's mean and std; then Gaussian
noise of std `noise` is added to y. The target factors through k dimensions, so its
bottleneck rank is at most k (``metadata["true_rank"]``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnrank.tasks.base import TaskData


def _random_relu_net(gen: torch.Generator, d_in: int, hidden: int, d_out: int, bias_std: float, scale: float = 1.0):
    w1 = torch.randn(hidden, d_in, generator=gen, dtype=torch.float64) * (scale / d_in**0.5)
    b1 = torch.randn(hidden, generator=gen, dtype=torch.float64) * bias_std
    w2 = torch.randn(d_out, hidden, generator=gen, dtype=torch.float64) / hidden**0.5
    return lambda z: torch.relu(z @ w1.T + b1) @ w2.T


def _standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-12)
    return (train - mean) / std, (test - mean) / std


def sample_composition(cfg, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The raw draw of a `CompositionTask` config: latents z (n, latent_dim), x = g(z) (n, d_in)
    and y = h(z_1, c·z_2, ..., c·z_k) (n, d_out), float64, n = n_train + n_test (training rows
    first), before standardization and noise. Drawn from `gen` (advanced), by default a new
    generator seeded with cfg.seed."""
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    g = _random_relu_net(gen, cfg.latent_dim, cfg.hidden, cfg.d_in, cfg.bias_std, cfg.g_scale)
    h = _random_relu_net(gen, cfg.rank, cfg.hidden, cfg.d_out, cfg.bias_std)
    z = torch.randn(cfg.n_train + cfg.n_test, cfg.latent_dim, generator=gen, dtype=torch.float64)
    weights = torch.full((cfg.rank,), cfg.minor_scale, dtype=torch.float64)
    weights[0] = 1.0
    return z, g(z), h(z[:, : cfg.rank] * weights)


def composition_task(cfg) -> TaskData:
    """Generate the task described by a `CompositionTask` config (deterministic in cfg.seed)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    _, x, y = sample_composition(cfg, gen)
    x_train, x_test = _standardize(x[: cfg.n_train], x[cfg.n_train :])
    y_train, y_test = _standardize(y[: cfg.n_train], y[cfg.n_train :])
    if cfg.noise > 0:
        y_train = y_train + cfg.noise * torch.randn(y_train.shape, generator=gen, dtype=torch.float64)
        y_test = y_test + cfg.noise * torch.randn(y_test.shape, generator=gen, dtype=torch.float64)
    meta = {"kind": "composition", "true_rank": cfg.rank, "latent_dim": cfg.latent_dim}
    return TaskData(x_train, y_train, x_test, y_test, meta)
