"""Kernel ridge regression with a Matérn kernel (ν = 1/2 is the Laplace kernel e^{−r/ℓ}), the
shallow baseline for the Matérn composition task; float64 throughout.

Objective (the "sum" fit convention of bnrank.training.objective): over f in the kernel's RKHS,

    (1/n) Σ_i ‖f(x_i) − y_i‖² + λ ‖f‖²_H   ⇒   f(x) = k(x, X) α,   α = (K + nλ I)⁻¹ Y,

solved by a Cholesky factorization (scipy.linalg.cho_factor / cho_solve).

λ selection (`select_lambda`), the protocol a caller applies to every method it compares: a
seeded permutation of the training set puts ⌈val_fraction·n⌉ rows in a validation split; each λ
of the grid is fit on the other rows and scored by the validation error (1/m) Σ‖f(x) − y‖²; the
smallest error wins (ties: the larger λ); the winner is refit on the whole training set. The
length scale defaults to the median pairwise distance of the training inputs (the median
heuristic), computed on at most the first 2000 rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.spatial.distance import pdist

from bnrank.errors import DataError
from bnrank.tasks.matern import matern_matrix


def _as_array(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise DataError(f"kernel ridge: {name} must be a non-empty 2-d array (N, d), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"kernel ridge: {name} contains NaN or inf")
    return a


def _check_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_array(x, "x"), _as_array(y, "y")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"kernel ridge: x has {x.shape[0]} rows but y has {y.shape[0]}")
    return x, y


def median_distance(x, max_rows: int = 2000) -> float:
    """Median pairwise Euclidean distance of the first `max_rows` rows of x (n, d)."""
    x = _as_array(x, "x")[:max_rows]
    d = pdist(x) if x.shape[0] > 1 else np.zeros(1)
    med = float(np.median(d))
    if not med > 0:
        raise DataError("kernel ridge: the median pairwise distance of x is 0; give length_scale")
    return med


def mean_squared_error(pred, y) -> float:
    """(1/n) Σ_i ‖pred_i − y_i‖² for (n, d_out) arrays."""
    return float(np.mean(np.sum((np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2, axis=1)))


@dataclass(frozen=True)
class KernelRidge:
    """A fitted model f(x) = k_ν(x, x_train) α: x_train (n, d), alpha (n, d_out)."""

    x_train: np.ndarray
    alpha: np.ndarray
    nu: float
    length_scale: float
    lam: float

    def predict(self, x) -> np.ndarray:
        """f(x): (m, d) → (m, d_out) float64."""
        x = _as_array(x, "x")
        if x.shape[1] != self.x_train.shape[1]:
            raise DataError(f"kernel ridge: x has {x.shape[1]} columns, the model was fit on {self.x_train.shape[1]}")
        return matern_matrix(x, self.x_train, self.nu, self.length_scale) @ self.alpha

    def error(self, x, y) -> float:
        """mean_squared_error of the predictions on (x, y)."""
        return mean_squared_error(self.predict(x), _as_array(y, "y"))


def fit_kernel_ridge(x, y, lam: float, nu: float = 0.5, length_scale: float | None = None) -> KernelRidge:
    """α = (K + nλ I)⁻¹ Y with K = [k_ν(‖x_i − x_j‖)]: x (n, d), y (n, d_out), λ ≥ 0 (λ = 0 is
    interpolation and needs K positive definite). length_scale None: median_distance(x)."""
    x, y = _check_xy(x, y)
    if not (math.isfinite(lam) and lam >= 0):
        raise DataError(f"kernel ridge: lam must be finite and >= 0, got {lam}")
    if not nu > 0:
        raise DataError(f"kernel ridge: nu must be > 0, got {nu}")
    ell = median_distance(x) if length_scale is None else float(length_scale)
    n = x.shape[0]
    k = matern_matrix(x, x, nu, ell)
    k.flat[:: n + 1] += n * lam
    try:
        factor = scipy.linalg.cho_factor(k, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise DataError(f"kernel ridge: K + nλI is not positive definite at lam = {lam:g}; use a larger lam") from None
    return KernelRidge(x, scipy.linalg.cho_solve(factor, y, check_finite=False), nu, ell, float(lam))


@dataclass(frozen=True)
class LambdaSelection:
    """The λ grid (ascending), each λ's validation error, the chosen λ and the model refit with it
    on the whole training set."""

    lams: np.ndarray
    val_errors: np.ndarray
    lam: float
    model: KernelRidge


def select_lambda(x, y, lams, nu: float = 0.5, length_scale: float | None = None, val_fraction: float = 0.2, seed: int = 0) -> LambdaSelection:
    """Choose λ from the grid `lams` (> 0) by the validation protocol of this module and refit.

    All λ are scored from one eigendecomposition K_fit = U diag(s) Uᵀ of the fit rows' kernel:
    α(λ) = U diag(1/(s + n_fit λ)) Uᵀ Y. The length scale (given or the median heuristic on all
    of x) is the same for the fit, the scoring and the refit.
    """
    x, y = _check_xy(x, y)
    lams = np.sort(np.asarray(lams, dtype=np.float64).ravel())
    if lams.size == 0 or not (np.isfinite(lams).all() and (lams > 0).all()):
        raise DataError("kernel ridge: lams must be a non-empty grid of finite values > 0")
    n = x.shape[0]
    n_val = math.ceil(val_fraction * n)
    if not 0 < val_fraction < 1 or n_val >= n:
        raise DataError(f"kernel ridge: val_fraction {val_fraction} leaves no rows to fit or validate on ({n} rows)")
    ell = median_distance(x) if length_scale is None else float(length_scale)
    perm = np.random.default_rng(seed).permutation(n)
    fit, val = perm[: n - n_val], perm[n - n_val :]
    s, u = np.linalg.eigh(matern_matrix(x[fit], x[fit], nu, ell))
    proj = matern_matrix(x[val], x[fit], nu, ell) @ u  # (m, n_fit)
    coef = u.T @ y[fit]  # (n_fit, d_out)
    inv = 1.0 / (s[None, :] + len(fit) * lams[:, None])  # (λ, n_fit)
    pred = proj @ (inv[:, :, None] * coef[None])  # (λ, m, d_out)
    val_errors = np.mean(np.sum((pred - y[val][None]) ** 2, axis=2), axis=1)
    best = lams.size - 1 - int(np.argmin(val_errors[::-1]))  # ties: the larger λ
    lam = float(lams[best])
    return LambdaSelection(lams, val_errors, lam, fit_kernel_ridge(x, y, lam, nu, ell))
