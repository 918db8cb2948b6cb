"""Weight spectra (docs/theory.md §4): singular values of every W_ℓ, their ranks, and the budget.

All functions take the stacked weights of an ensemble, ``weights[ℓ-1]`` of shape
(E, d_ℓ, d_{ℓ-1}), and work in the dtype they are given (analyze passes float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NEAR_ONE = 0.25
"""A singular value s counts as "near one" when |s − 1| < NEAR_ONE."""


def weight_spectra(weights: Sequence[Tensor]) -> list[Tensor]:
    """Singular values of every W_ℓ, descending: a list of (E, min(d_ℓ, d_{ℓ-1})) tensors."""
    return [torch.linalg.svdvals(w) for w in weights]


def count_above(values: Tensor, threshold: float) -> Tensor:
    """# entries > threshold along the last axis: (..., m) → (...,) int64."""
    return (values > threshold).sum(-1)


def count_near_one(values: Tensor, tol: float = NEAR_ONE) -> Tensor:
    """# entries with |s − 1| < tol along the last axis: (..., m) → (...,) int64."""
    return ((values - 1).abs() < tol).sum(-1)


def layer_budget(spectrum: Tensor, k: Tensor) -> Tensor:
    """Per-layer term of the bottleneck budget (docs/theory.md §4), one value per member.

    spectrum: (E, m) singular values of W_ℓ, descending; k: (E,) integer ranks (k ≤ m).
    Returns Σ_{i≤k} (s_i² − 1 − log s_i²) + Σ_{i>k} s_i², shape (E,). Each of the first k
    terms is ≥ 0 and vanishes only at s_i = 1; the sum over layers is at most
    ‖θ‖² − kL − 2 log|Jf(x)|₊ at any x where Jf(x) has k nonzero singular values.
    """
    sq = spectrum.square()
    top = torch.arange(spectrum.shape[-1], device=spectrum.device) < k[:, None]
    return torch.where(top, sq - 1 - torch.log(sq), sq).sum(-1)
