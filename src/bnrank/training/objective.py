"""The regularized objective (docs/theory.md §1), per member:

    C(θ) = (1/N) Σ_i ‖f_θ(x_i) − y_i‖² + λ ‖θ‖²                       (reduction "sum", the default)
    C(θ) = (1/(N·d_out)) Σ_i ‖f_θ(x_i) − y_i‖² + λ ‖θ‖²                (reduction "mean")

"sum": squared error summed over output coordinates and averaged over samples (docs/theory.md §1);
"mean": averaged over both, torch.nn.MSELoss's default. A "mean" objective at λ is the "sum"
objective at d_out·λ divided by d_out: same minimizers, a d_out times weaker fit term. The
penalty is added explicitly (torch's weight_decay would be a (λ/2)‖θ‖² penalty instead).
"""

from __future__ import annotations

from torch import Tensor

from bnrank.config import MseReduction


def mse_scale(reduction: MseReduction, d_out: int) -> float:
    """The factor from the "sum" squared error to the `reduction` one: 1, or 1/d_out for "mean"."""
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        return 1.0 / d_out
    raise ValueError(f"mse reduction must be 'sum' or 'mean', got {reduction!r}")


def mse(pred: Tensor, y: Tensor, reduction: MseReduction = "sum") -> Tensor:
    """(1/N) Σ_i ‖pred_i − y_i‖² ("sum") or that / d ("mean"): pred (E, N, d), y (N, d) or (E, N, d) → (E,)."""
    return (pred - y).square().sum(-1).mean(-1) * mse_scale(reduction, pred.shape[-1])


def objective(
    model, x: Tensor, y: Tensor, lam: Tensor, reduction: MseReduction = "sum"
) -> tuple[Tensor, Tensor, Tensor]:
    """(objective, mse, ‖θ‖²), each (E,); `lam` is (E,) or a scalar."""
    err = mse(model(x), y, reduction)
    norm_sq = model.param_norm_sq()
    return err + lam * norm_sq, err, norm_sq
