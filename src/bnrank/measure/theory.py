"""Closed forms for linear networks and the depth fit of trained ones (docs/theory.md §2, §3).

>>> import numpy as np
>>> A = np.diag([3.0, 2.0, 0.0])
>>> linear_expansion(A)                        # (rank, 2Σ log s, 2Σ (log s)²)
LinearExpansion(r0=2, r1=3.58..., r2=3.37...)
>>> linear_cost(A, depth=10)                   # ≈ 10·2 + r1 + r2/10 = 23.92
23.94...
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from bnrank.errors import DataError


class LinearExpansion(NamedTuple):
    """R(A; L) = L·r0 + r1 + r2/L + O(L⁻²): rank, 2 log|A|₊, 2 Σ (log s_i)²."""

    r0: int
    r1: float
    r2: float


def _nonzero_spectrum(a) -> tuple[np.ndarray, int]:
    """(nonzero singular values, descending, float64; rank) of a 2-d array-like or tensor.

    Singular values ≤ numpy.linalg.matrix_rank's tolerance (s_max · max(shape) · eps) are
    round-off of exact zeros and are dropped. Anything but a finite non-empty matrix is a DataError.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise DataError(f"expected a non-empty matrix, got an array of shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError("matrix contains NaN or inf")
    s = np.linalg.svd(a, compute_uv=False)
    s = s[s > s[0] * max(a.shape) * np.finfo(np.float64).eps]
    return s, s.size


def linear_cost(a, depth: int) -> float:
    """R(A; L) = L·Σ_i s_i(A)^{2/L}: the least ‖θ‖² of a depth-L linear net computing A (no biases).

    Sums over the nonzero singular values (see linear_expansion for the rank tolerance).
    """
    if int(depth) != depth or depth < 1:
        raise DataError(f"depth must be a positive integer, got {depth}")
    s, _ = _nonzero_spectrum(a)
    return float(depth * np.sum(s ** (2.0 / depth)))


def linear_expansion(a) -> LinearExpansion:
    """(R⁽⁰⁾, R⁽¹⁾, R⁽²⁾) of A = (rank A, 2 Σ log s_i, 2 Σ (log s_i)²) over its nonzero s_i.

    The rank uses numpy.linalg.matrix_rank's tolerance (s_max · max(shape) · eps).
    """
    s, rank = _nonzero_spectrum(a)
    logs = np.log(s)
    return LinearExpansion(rank, float(2 * logs.sum()), float(2 * np.square(logs).sum()))


FIT_COLUMNS = ["rank", "n_depths", "n_networks", "slope", "slope_stderr", "intercept", "intercept_stderr"]


def fit_depth_expansion(df: pd.DataFrame, with_r2: bool = False) -> pd.DataFrame:
    """Fit ‖θ‖²(L) ≈ a·L + b (+ c/L when `with_r2`) by least squares within each rank class.

    df: one row per trained network with columns ``depth``, ``param_norm_sq`` and ``rank`` (its
    rank class, e.g. the rank of its middle weight matrix); rows whose depth or ‖θ‖² is not
    finite are ignored. Returns one row per rank, ascending, with columns FIT_COLUMNS (+
    ``r2_coef``, ``r2_coef_stderr``): the theory predicts slope = rank, intercept ≈ R⁽¹⁾,
    r2_coef ≈ R⁽²⁾. Standard errors are the usual OLS ones, σ̂²(XᵀX)⁻¹ with
    σ̂² = RSS/(n − p); a class with fewer distinct depths than parameters (p = 2, or 3 with
    `with_r2`) gets NaN estimates, one with exactly p networks NaN standard errors.
    """
    missing = [c for c in ("depth", "param_norm_sq", "rank") if c not in df.columns]
    if missing:
        raise DataError(f"fit_depth_expansion: missing column(s) {', '.join(missing)} (have {', '.join(map(str, df.columns))})")
    names = ["slope", "intercept"] + (["r2_coef"] if with_r2 else [])
    data = df[["rank", "depth", "param_norm_sq"]].astype(float)
    data = data[np.isfinite(data).all(axis=1)]
    rows = []
    for rank, group in data.groupby("rank", sort=True):
        depth = group["depth"].to_numpy()
        row = {"rank": int(rank), "n_depths": int(np.unique(depth).size), "n_networks": len(group)}
        coef, stderr = np.full(len(names), np.nan), np.full(len(names), np.nan)
        if row["n_depths"] >= len(names):
            design = np.column_stack([depth, np.ones_like(depth)] + ([1.0 / depth] if with_r2 else []))
            target = group["param_norm_sq"].to_numpy()
            coef = np.linalg.lstsq(design, target, rcond=None)[0]
            dof = len(target) - len(names)
            if dof > 0:
                sigma_sq = np.sum((target - design @ coef) ** 2) / dof
                stderr = np.sqrt(np.diag(sigma_sq * np.linalg.inv(design.T @ design)))
        for name, c, se in zip(names, coef, stderr):
            row[name], row[f"{name}_stderr"] = float(c), float(se)
        rows.append(row)
    columns = FIT_COLUMNS + (["r2_coef", "r2_coef_stderr"] if with_r2 else [])
    return pd.DataFrame(rows, columns=columns)
