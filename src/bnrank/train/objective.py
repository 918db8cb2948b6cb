"""The regularized objective (theory.md §1), per member:

    C(θ) = (1/N) Σ_i ‖f_θ(x_i) − y_i‖² + λ ‖θ‖²

squared error summed over output coordinates and averaged over samples; the penalty is added
explicitly (torch's weight_decay would be a (λ/2)‖θ‖² penalty instead).
"""

from __future__ import annotations

from torch import Tensor

from bnrank.models import EnsembleMLP


def mse(pred: Tensor, y: Tensor) -> Tensor:
    """(1/N) Σ_i ‖pred_i − y_i‖²: pred (E, N, d), y (N, d) or (E, N, d) → (E,)."""
    return (pred - y).square().sum(-1).mean(-1)


def objective(model: EnsembleMLP, x: Tensor, y: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(objective, mse, ‖θ‖²), each (E,); `lam` is (E,) or a scalar."""
    err = mse(model(x), y)
    norm_sq = model.param_norm_sq()
    return err + lam * norm_sq, err, norm_sq
