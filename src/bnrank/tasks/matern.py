"""The Matérn composition task: y = h(g(x)) with g and h Gaussian-process draws.

g: R^{d_in} → R^k and h: R^k → R^{d_out}; every coordinate of g (of h) is an independent draw of
a zero-mean GP with the unit-variance Matérn covariance of smoothness ν_g (ν_h)

    k_ν(r) = 2^{1−ν}/Γ(ν) · s^ν K_ν(s),   s = √(2ν) r / ℓ,   k_ν(0) = 1,

(K_ν the modified Bessel function of the second kind). A draw is ν-smooth in the Sobolev sense
(ν − ε times differentiable), so ν_g and ν_h set how hard g and h are to learn. The target factors
through k dimensions: its bottleneck rank is at most k (``metadata["true_rank"]``).

Sampling is exact on the n = n_train + n_test points, not an approximation of the process:
x ~ N(0, I_{d_in}) ("gaussian") or uniform on the sphere of radius √d_in ("sphere", the same
typical norm); then g(x) = L_g Z_g with L_g the Cholesky factor of [k_{ν_g}(‖x_i − x_j‖)] + jitter·I
and Z_g ~ N(0, I) of shape (n, k); then h on the points g(x_i) the same way. Length scales are
in units of the typical norm of the points they act on: ℓ_g = length_g·√d_in for x and
ℓ_h = length_h·√k for g(x) (each coordinate of g has unit variance). y is standardized per
coordinate with the training set's mean and std, then Gaussian noise of std `noise` is added.

Jitter: `jitter` (default 1e-8, i.e. a nugget of std 1e-4 against unit-variance functions) is
added to the kernel's diagonal; if the float64 Cholesky still fails, it is multiplied by 10 up to
1e-4 before giving up (a DataError). The jitter used is in metadata (``jitter_g``, ``jitter_h``).

Cost: two Cholesky factorizations of an n × n float64 matrix, O(n³) time (n³/3 flops each) and
8·n² bytes of memory (the kernel is filled in blocks of 4M entries and factored in place), so
MAX_GP_POINTS = 20000 points take 3.2 GB and, at tens of GFLOP/s, about a minute; the config
refuses more.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.special
import torch
from scipy.spatial.distance import cdist
from torch import Tensor

from bnrank.config import MAX_GP_POINTS, MAX_NU  # noqa: F401  (the config refuses more points)
from bnrank.errors import DataError
from bnrank.tasks.base import TaskData

_BLOCK_ENTRIES = 1 << 22  # kernel entries computed at a time (32 MB per float64 temporary)
_MAX_JITTER = 1e-4


def matern_closed_form(r: np.ndarray, nu: float, length_scale: float = 1.0) -> np.ndarray:
    """k_ν(r) for ν ∈ {1/2, 3/2, 5/2} by the elementary formulas (s = √(2ν) r / ℓ):
    e^{−s}, (1 + s) e^{−s}, (1 + s + s²/3) e^{−s}. `r` (any shape) ≥ 0, float64."""
    s = math.sqrt(2 * nu) * np.asarray(r, dtype=np.float64) / length_scale
    if nu == 0.5:
        poly = 1.0
    elif nu == 1.5:
        poly = 1.0 + s
    elif nu == 2.5:
        poly = 1.0 + s + s * s / 3.0
    else:
        raise ValueError(f"no closed form for nu = {nu}; use matern_general")
    return poly * np.exp(-s)


def matern_general(r: np.ndarray, nu: float, length_scale: float = 1.0) -> np.ndarray:
    """k_ν(r) for 0 < ν ≤ MAX_NU via scipy.special.kve, in logs: log k = (1 − ν) log 2 − log Γ(ν)
    + ν log s + log(e^s K_ν(s)) − s; k(0) = 1. Where K_ν(s) overflows float64 (s < 3e-5 at
    ν = 50, s < 1e-300 for ν ≤ 1) the small-s series 1 − s²/(4(ν−1)) + s⁴/(32(ν−1)(ν−2))
    (ν > 2; else 1) is used, whose next term is below 1e-30 there. Accuracy: ≈ 1e-14 relative
    for ν ≲ 5, ≈ 1e-13 absolute at ν = 50 (the log terms, of size up to ≈ 700, cancel)."""
    if not 0 < nu <= MAX_NU:
        raise ValueError(f"nu must be in (0, {MAX_NU}], got {nu}")
    s = math.sqrt(2 * nu) * np.asarray(r, dtype=np.float64) / length_scale
    out = np.ones_like(s)
    pos = s > 0
    sp = s[pos]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        logk = (1 - nu) * math.log(2) - scipy.special.gammaln(nu) + nu * np.log(sp) + np.log(scipy.special.kve(nu, sp)) - sp
        vals = np.exp(np.minimum(logk, 0.0))  # k ≤ 1; the clip only removes round-off above 1
    over = ~np.isfinite(logk)  # K_ν(s) = inf: s → 0
    if nu > 2:
        so = sp[over] ** 2
        vals[over] = 1 - so / (4 * (nu - 1)) + so * so / (32 * (nu - 1) * (nu - 2))
    else:
        vals[over] = 1.0
    out[pos] = vals
    return out


def matern(r: np.ndarray, nu: float, length_scale: float = 1.0) -> np.ndarray:
    """The unit-variance Matérn covariance k_ν(r) (closed form at ν = 1/2, 3/2, 5/2)."""
    if nu in (0.5, 1.5, 2.5):
        return matern_closed_form(r, nu, length_scale)
    return matern_general(r, nu, length_scale)


def matern_matrix(a: np.ndarray, b: np.ndarray, nu: float, length_scale: float, out: np.ndarray | None = None) -> np.ndarray:
    """[k_ν(‖a_i − b_j‖)]: (n, d), (m, d) → (n, m) float64, filled in blocks of rows (memory
    n·m + a block) into `out` when given."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.empty((a.shape[0], b.shape[0])) if out is None else out
    step = max(1, _BLOCK_ENTRIES // max(1, b.shape[0]))
    for start in range(0, a.shape[0], step):
        rows = slice(start, start + step)
        out[rows] = matern(cdist(a[rows], b), nu, length_scale)
    return out


def gp_draw(points: np.ndarray, nu: float, length_scale: float, n_functions: int, gen: torch.Generator, jitter: float = 1e-8) -> tuple[np.ndarray, float]:
    """`n_functions` independent draws of the Matérn GP at `points` (n, d): (values (n,
    n_functions) float64, jitter used). Z ~ N(0, I) comes from `gen` (advanced); the Cholesky
    factor L of K + jitter·I is taken in place (jitter ×10 on failure, up to 1e-4)."""
    n = points.shape[0]
    z = torch.randn(n, n_functions, generator=gen, dtype=torch.float64).numpy()
    kernel = np.empty((n, n))
    while True:
        matern_matrix(points, points, nu, length_scale, out=kernel)
        kernel.flat[:: n + 1] += jitter
        try:
            # kernel is symmetric, so its transpose is the same matrix in Fortran order: factored in place
            chol = scipy.linalg.cholesky(kernel.T, lower=True, overwrite_a=True, check_finite=False)
            break
        except np.linalg.LinAlgError:
            if jitter * 10 > _MAX_JITTER * (1 + 1e-9):
                raise DataError(
                    f"Matérn kernel (nu = {nu}, length scale {length_scale:g}) on {n} points is not positive "
                    f"definite in float64 even with jitter {jitter:g}"
                ) from None
            jitter *= 10
    return chol @ z, jitter


def sample_matern_composition(cfg, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The raw draw of a `MaternCompositionTask` config: x (n, d_in), g(x) (n, rank),
    y = h(g(x)) (n, d_out), float64, n = n_train + n_test (training rows first), before
    standardization and noise, and {"jitter_g", "jitter_h"}. Drawn from `gen` (advanced), by
    default a new generator seeded with cfg.seed."""
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    n = cfg.n_train + cfg.n_test
    x = torch.randn(n, cfg.d_in, generator=gen, dtype=torch.float64)
    if cfg.inputs == "sphere":
        x = x / x.norm(dim=1, keepdim=True) * math.sqrt(cfg.d_in)
    g, jitter_g = gp_draw(x.numpy(), cfg.nu_g, cfg.length_g * math.sqrt(cfg.d_in), cfg.rank, gen, cfg.jitter)
    y, jitter_h = gp_draw(g, cfg.nu_h, cfg.length_h * math.sqrt(cfg.rank), cfg.d_out, gen, cfg.jitter)
    return x, torch.from_numpy(g), torch.from_numpy(y), {"jitter_g": jitter_g, "jitter_h": jitter_h}


def matern_composition_task(cfg) -> TaskData:
    """Generate the task a `MaternCompositionTask` config describes (deterministic in cfg.seed)."""
    return matern_composition_draw(cfg)[0]


def matern_composition_draw(cfg) -> tuple[TaskData, Tensor]:
    """The task of `matern_composition_task` and g(x) on its rows (n_train + n_test, rank),
    float64, training rows first: the inner function the target factors through."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x, g, y, jitters = sample_matern_composition(cfg, gen)
    y_train, y_test = y[: cfg.n_train], y[cfg.n_train :]
    mean, std = y_train.mean(0), y_train.std(0).clamp_min(1e-12)
    y_train, y_test = (y_train - mean) / std, (y_test - mean) / std
    if cfg.noise > 0:
        y_train = y_train + cfg.noise * torch.randn(y_train.shape, generator=gen, dtype=torch.float64)
        y_test = y_test + cfg.noise * torch.randn(y_test.shape, generator=gen, dtype=torch.float64)
    meta = {
        "kind": "matern-composition", "true_rank": cfg.rank, "nu_g": cfg.nu_g, "nu_h": cfg.nu_h,
        "length_g": cfg.length_g, "length_h": cfg.length_h, "inputs": cfg.inputs, **jitters,
    }
    return TaskData(x[: cfg.n_train], y_train, x[cfg.n_train :], y_test, meta), g
