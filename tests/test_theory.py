"""Closed forms for linear networks and the depth fit (docs/theory.md §2, §3)."""

import mpmath
import numpy as np
import pandas as pd
import pytest
import torch

from bnrank import DataError, fit_depth_expansion, linear_cost, linear_expansion

S = [2.5, 1.0, 0.3]


def _matrix(s, shape=(4, 6), seed=0):
    """U diag(s) Vᵀ of the given shape with random orthonormal U, V (rank len(s))."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((shape[0], len(s))))[0]
    v = np.linalg.qr(rng.standard_normal((shape[1], len(s))))[0]
    return u @ np.diag(s) @ v.T


def _cost_mp(s, depth):
    """L·Σ s^{2/L} in 50-digit arithmetic."""
    with mpmath.workdps(50):
        return depth * mpmath.fsum(mpmath.mpf(x) ** (mpmath.mpf(2) / depth) for x in s)


def test_linear_cost_matches_high_precision_and_drops_roundoff_zeros():
    a = _matrix(S)  # rank 3 in R^{4×6}: its 4th singular value is round-off
    assert np.linalg.svd(a, compute_uv=False)[3] > 0
    for depth in (1, 2, 7, 1000):
        assert linear_cost(a, depth) == pytest.approx(float(_cost_mp(S, depth)), rel=1e-12)
    assert linear_cost(torch.tensor(a), 3) == linear_cost(a, 3)
    assert linear_cost(np.zeros((2, 3)), 5) == 0


def test_linear_expansion_is_the_large_depth_expansion():
    a = _matrix(S)
    r0, r1, r2 = linear_expansion(a)
    assert r0 == 3
    # L·Σ s^{2/L} = L·R0 + R1 + R2/L + (4/3)Σ(log s)³/L² + O(L⁻³), evaluated without round-off
    c3 = mpmath.mpf(4) / 3 * mpmath.fsum(mpmath.log(x) ** 3 for x in S)
    for depth in (100, 1000, 10000):
        with mpmath.workdps(50):
            remainder = _cost_mp(S, depth) - depth * r0 - mpmath.mpf(r1) - mpmath.mpf(r2) / depth
            assert abs(remainder * depth**2 - c3) < 5 / depth
    assert linear_expansion(np.zeros((3, 3))) == (0, 0.0, 0.0)


def test_linear_forms_reject_bad_input():
    with pytest.raises(DataError, match="shape"):
        linear_cost(np.ones(3), 2)
    with pytest.raises(DataError, match="NaN"):
        linear_expansion(np.array([[np.nan, 1.0]]))
    with pytest.raises(DataError, match="depth"):
        linear_cost(np.eye(2), 0)


PLANTED = {1: (-2.5, 3.0), 3: (4.0, -1.5)}  # rank k: (R1, R2)


def _sweep(depths, with_r2, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for k, (r1, r2) in PLANTED.items():
        for depth in depths:
            for _ in range(2):  # two networks per depth
                norm = k * depth + r1 + (r2 / depth if with_r2 else 0.0) + noise * rng.standard_normal()
                rows.append({"depth": depth, "rank": k, "param_norm_sq": norm})
    return pd.DataFrame(rows)


def test_fit_recovers_planted_rank_and_r1():
    fit = fit_depth_expansion(_sweep(range(4, 12), with_r2=False))
    assert list(fit["rank"]) == [1, 3]
    np.testing.assert_allclose(fit.slope, [1, 3], rtol=1e-12)
    np.testing.assert_allclose(fit.intercept, [-2.5, 4.0], rtol=1e-12)
    np.testing.assert_allclose(fit[["slope_stderr", "intercept_stderr"]], 0, atol=1e-10)
    assert list(fit.n_depths) == [8, 8] and list(fit.n_networks) == [16, 16]


def test_fit_with_r2_recovers_all_three():
    fit = fit_depth_expansion(_sweep(range(4, 12), with_r2=True), with_r2=True)
    np.testing.assert_allclose(fit[["slope", "intercept", "r2_coef"]], [[1, -2.5, 3.0], [3, 4.0, -1.5]], rtol=1e-9)
    # the affine fit is biased by the 1/L term: the R2 fit is needed
    assert abs(fit_depth_expansion(_sweep(range(4, 12), with_r2=True)).intercept[0] + 2.5) > 0.1


def test_fit_standard_errors_cover_noise():
    fit = fit_depth_expansion(_sweep(range(4, 30), with_r2=False, noise=0.5))
    for k, (r1, _) in PLANTED.items():
        row = fit[fit["rank"] == k].iloc[0]
        assert 0 < row.slope_stderr < 0.05 and abs(row.slope - k) < 4 * row.slope_stderr
        assert abs(row.intercept - r1) < 4 * row.intercept_stderr


def test_fit_small_classes_get_nan_with_counts():
    df = pd.DataFrame({
        "depth": [5, 5, 6, 8, 9, 4, np.nan],
        "rank": [1, 1, 2, 2, 2, 3, 3],
        "param_norm_sq": [5.0, 5.1, 12.0, 16.0, 18.0, np.inf, 1.0],
    })
    fit = fit_depth_expansion(df, with_r2=True).set_index("rank")
    assert fit.loc[1, "n_depths"] == 1 and fit.loc[1, "n_networks"] == 2 and np.isnan(fit.loc[1, "slope"])
    assert fit.loc[2, "n_networks"] == 3 and np.isfinite(fit.loc[2, "r2_coef"])  # exactly determined
    assert np.isnan(fit.loc[2, "r2_coef_stderr"])
    assert 3 not in fit.index  # both its rows are non-finite
    with pytest.raises(DataError, match="param_norm_sq"):
        fit_depth_expansion(df.drop(columns="param_norm_sq"))
