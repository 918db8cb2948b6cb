"""Scaling exponents: the least-squares fit log(err) = a + b·log N and the slope's standard error.

>>> import numpy as np
>>> n = np.array([100.0, 200.0, 400.0, 800.0])
>>> fit = fit_power_law(n, 3.0 * n**-0.5)
>>> round(fit.b, 12), round(fit.a - float(np.log(3.0)), 12), round(fit.b_stderr, 12)
(-0.5, 0.0, 0.0)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.stats

from bnrank.errors import DataError


class PowerLawFit(NamedTuple):
    """err ≈ e^a · N^b: intercept a, exponent b (negative when the error falls), their standard
    errors (ordinary least squares on the logs, residual variance RSS / (points − 2)), and the
    number of points."""

    a: float
    b: float
    a_stderr: float
    b_stderr: float
    points: int

    def predict(self, n) -> np.ndarray:
        """e^a · n^b."""
        return np.exp(self.a) * np.asarray(n, dtype=np.float64) ** self.b


def fit_power_law(n, err) -> PowerLawFit:
    """Fit log err = a + b·log n by least squares (scipy.stats.linregress, float64).

    `n`, `err`: 1-d, equal length, finite and > 0; repeated n (several seeds per size) are
    separate points. At least 3 points and 2 distinct n, else a DataError (no standard error).
    """
    n, err = np.asarray(n, dtype=np.float64), np.asarray(err, dtype=np.float64)
    if n.ndim != 1 or n.shape != err.shape:
        raise DataError(f"power-law fit: n and err must be 1-d of equal length, got shapes {n.shape} and {err.shape}")
    if not (np.isfinite(n).all() and np.isfinite(err).all() and (n > 0).all() and (err > 0).all()):
        raise DataError("power-law fit: n and err must be finite and > 0")
    if n.size < 3 or np.unique(n).size < 2:
        raise DataError(f"power-law fit: needs at least 3 points and 2 distinct n, got {n.size} points, {np.unique(n).size} distinct n")
    res = scipy.stats.linregress(np.log(n), np.log(err))
    return PowerLawFit(float(res.intercept), float(res.slope), float(res.intercept_stderr), float(res.stderr), int(n.size))


def fit_power_laws(frame: pd.DataFrame, by: list[str], n: str = "n", err: str = "test_error") -> pd.DataFrame:
    """One `fit_power_law` per group of `frame` (columns `by`): a frame with the `by` columns and
    a, b, a_stderr, b_stderr, points."""
    rows = [
        {**dict(zip(by, key if isinstance(key, tuple) else (key,))), **fit_power_law(g[n], g[err])._asdict()}
        for key, g in frame.groupby(by, sort=True)
    ]
    return pd.DataFrame(rows, columns=[*by, *PowerLawFit._fields])
