import numpy as np
import torch

from bnrank import EnsembleMLP
from bnrank.training.objective import objective


def test_objective_against_hand_computation():
    w1 = np.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.0]])
    b1 = np.array([0.1, -0.2, 0.3])
    w2 = np.array([[2.0, -1.0, 0.5]])
    b2 = np.array([-0.4])
    x = np.array([[1.0, 0.5], [-1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    y = np.array([[1.0], [0.0], [-2.0], [0.5]])
    lam = 0.05
    hidden = np.maximum(x @ w1.T + b1, 0.0)
    f = hidden @ w2.T + b2
    mse = np.mean(np.sum((f - y) ** 2, axis=1))
    norm = sum(np.sum(a**2) for a in (w1, b1, w2, b2))
    t = lambda a: torch.tensor(a)[None]  # noqa: E731
    ens = EnsembleMLP([t(w1), t(w2)], [t(b1), t(b2)])
    obj, err, norm_sq = objective(ens, torch.tensor(x), torch.tensor(y), torch.tensor(lam, dtype=torch.float64))
    assert abs(err.item() - mse) < 1e-12
    assert abs(norm_sq.item() - norm) < 1e-12
    assert abs(obj.item() - (mse + lam * norm)) < 1e-12


def test_mean_reduction_divides_the_squared_error_by_d_out():
    gen = torch.Generator().manual_seed(0)
    ens = EnsembleMLP.init(2, [3, 5, 4], seeds=[0, 1], dtype=torch.float64)
    x, y = torch.randn(6, 3, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.3], dtype=torch.float64)
    obj_mean, err_mean, norm = objective(ens, x, y, lam, "mean")
    with torch.no_grad():
        expected = (ens(x) - y).square().mean((-2, -1))  # torch.nn.MSELoss's default, per member
    torch.testing.assert_close(err_mean, expected, rtol=1e-12, atol=0)
    # the "mean" objective at λ is the "sum" objective at d_out·λ, divided by d_out
    obj_sum, _, _ = objective(ens, x, y, 4 * lam, "sum")
    torch.testing.assert_close(obj_mean, obj_sum / 4, rtol=1e-12, atol=0)


def test_unknown_reduction_is_refused():
    import pytest

    ens = EnsembleMLP.init(1, [2, 2], seeds=[0], dtype=torch.float64)
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        objective(ens, torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64), 0.1, "median")
