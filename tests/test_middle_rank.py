"""Rank-capped phases (Phase.middle_rank): projected steps that keep W_{⌈L/2⌉} at rank ≤ k."""

import pytest
import torch

from bnrank.config import RunConfig, TrainConfig, validate
from bnrank.errors import ConfigError
from bnrank.models import EnsembleMLP
from bnrank.training import fit
from bnrank.training.recipe import middle_layer


def _net(members=3, depth=5, seeds=None):
    return EnsembleMLP.init(members, [4] + [7] * (depth - 1) + [3], seeds=seeds or range(members), dtype=torch.float64)


def _data(n=40):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)


def test_capping_gives_each_members_best_rank_k_approximation_and_leaves_the_others():
    net = _net(4)
    m = middle_layer(net.depth) - 1
    before = net.weights[m].detach().clone()
    net.cap_middle_rank_(torch.tensor([1, 3, -1, 0]), active=torch.tensor([True, True, True, False]))
    after = net.weights[m].detach()
    for e, k in ((0, 1), (1, 3)):
        u, s, vh = torch.linalg.svd(before[e])
        torch.testing.assert_close(after[e], (u[:, :k] * s[:k]) @ vh[:k], rtol=0, atol=1e-12)  # Eckart–Young
        assert torch.linalg.matrix_rank(after[e]).item() == k
    assert torch.equal(after[2], before[2]) and torch.equal(after[3], before[3])  # no cap; inactive
    others = [w for i, w in enumerate(net.weights) if i != m]
    assert all(torch.equal(a, b) for a, b in zip(others, [w for i, w in enumerate(_net(4).weights) if i != m]))


def test_capping_skips_a_non_finite_member():
    net = _net(2)
    m = middle_layer(net.depth) - 1
    with torch.no_grad():
        net.weights[m][0, 0, 0] = float("nan")
    net.cap_middle_rank_(torch.tensor([1, 1]))
    assert torch.isnan(net.weights[m][0, 0, 0]) and torch.linalg.matrix_rank(net.weights[m][1].detach()).item() == 1


def _cfg(caps, steps=60):
    return validate(TrainConfig, {"lam": 0.01, "mse_reduction": "mean", "log_every": 20, "phases": [
        {"optimizer": "adam", "steps": steps, "lr": 0.01, "middle_rank": caps},
        {"optimizer": "gd", "steps": 20, "lr": 0.01}]})


def test_a_capped_phase_keeps_the_cap_through_the_phase_and_members_independent():
    x, y = _data()
    capped = _net(2, seeds=[0, 1])
    fit(capped, x, y, _cfg([2, None]).model_copy(update={"phases": _cfg([2, None]).phases[:1]}), progress=False)
    w = capped.weights[middle_layer(capped.depth) - 1].detach()
    assert torch.linalg.matrix_rank(w[0]).item() == 2 and torch.linalg.matrix_rank(w[1]).item() == 7
    plain = _net(2, seeds=[5, 1])  # member 1 with another, uncapped, ensemble mate
    fit(plain, x, y, _cfg(None).model_copy(update={"phases": _cfg(None).phases[:1]}), progress=False)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(capped.parameters(), plain.parameters()))


def test_the_cap_is_lifted_after_its_phase():
    x, y = _data()
    net = _net(1)
    res = fit(net, x, y, _cfg(1), progress=False)
    assert res.steps == 80
    s = torch.linalg.svdvals(net.weights[middle_layer(net.depth) - 1].detach()[0])
    assert s[1] > 1e-6  # the uncapped gd phase moved the other directions off zero


def test_middle_rank_validation():
    with pytest.raises(ConfigError, match="middle_rank"):
        validate(TrainConfig, {"phases": [{"optimizer": "lbfgs", "middle_rank": 1}]})
    with pytest.raises(ConfigError, match="middle_rank"):
        validate(TrainConfig, {"phases": [{"middle_rank": -1}]})
    with pytest.raises(ConfigError, match="middle_rank has 2 values but members = 3"):
        validate(RunConfig, {"members": 3, "train": {"phases": [{"middle_rank": [1, None]}]}})
    from bnrank.models.leaky_resnet import EnsembleLeakyResNet

    x, y = _data()
    leaky = EnsembleLeakyResNet.init(1, 4, 3, 7, 4, 1.0, seeds=[0])
    with pytest.raises(ConfigError, match="caps an MLP's middle weight"):
        fit(leaky, x.float(), y.float(), _cfg(1), progress=False)
