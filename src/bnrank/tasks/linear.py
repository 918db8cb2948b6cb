"""Linear regression with a planted matrix: y = A* x + noise (the deep-linear-network test bed).

A* = U diag(s) Vᵀ (d_out × d_in) with U (d_out × r), V (d_in × r) drawn as random orthonormal
columns (QR of a Gaussian matrix, signs fixed) and s = `singular_values` (r of them, in the
given order, so a non-descending list plants them out of order on purpose). Inputs are
x ~ N(0, I_{d_in}); with ``inputs: whitened`` the training inputs are mapped to X ← X (XᵀX/N)^{-1/2},
so XᵀX/N = I exactly and (1/N)‖A X − Y‖² = ‖A − A*‖_F² for noiseless Y: the loss then depends on
A only through its distance to A*, which makes gradient flow of a deep linear net decouple along
the singular directions of A* (docs/theory.md §3). Rows are samples: X is (N, d_in), Y = X A*ᵀ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnrank.tasks.base import TaskData


def random_orthonormal(gen: torch.Generator, n: int, k: int) -> Tensor:
    """(n, k) float64 with orthonormal columns, Haar-distributed (QR with the sign of R's diagonal fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def planted_matrix(cfg, gen: torch.Generator | None = None) -> Tensor:
    """A* (d_out, d_in) of a `LinearRegressionTask` config, float64 (drawn first from the task's seed)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    r = len(cfg.singular_values)
    u, v = random_orthonormal(gen, cfg.d_out, r), random_orthonormal(gen, cfg.d_in, r)
    return u @ torch.diag(torch.tensor(cfg.singular_values, dtype=torch.float64)) @ v.T


def whiten(x: Tensor) -> Tensor:
    """x (N, d) with N ≥ d mapped to x (xᵀx/N)^{-1/2}, whose second moment is exactly I."""
    evals, evecs = torch.linalg.eigh(x.T @ x / x.shape[0])
    return x @ (evecs * evals.rsqrt()) @ evecs.T


def linear_regression_task(cfg) -> TaskData:
    """The task a `LinearRegressionTask` config describes (deterministic in cfg.seed)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    a = planted_matrix(cfg, gen)
    x = torch.randn(cfg.n_train + cfg.n_test, cfg.d_in, generator=gen, dtype=torch.float64)
    x_train, x_test = x[: cfg.n_train], x[cfg.n_train :]
    if cfg.inputs == "whitened":
        x_train = whiten(x_train)
    y_train, y_test = x_train @ a.T, x_test @ a.T
    if cfg.noise > 0:
        y_train = y_train + cfg.noise * torch.randn(y_train.shape, generator=gen, dtype=torch.float64)
    meta = {"kind": "linear-regression", "true_rank": len(cfg.singular_values),
            "singular_values": sorted(cfg.singular_values, reverse=True)}
    return TaskData(x_train, y_train, x_test, y_test, meta)
