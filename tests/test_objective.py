import numpy as np
import torch

from bnrank import EnsembleMLP
from bnrank.train.objective import objective


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
