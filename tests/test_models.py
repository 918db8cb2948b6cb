import pytest
import torch
from torch import nn

from bnrank import EnsembleMLP, ModelError
from bnrank.errors import DataError
from bnrank.training.objective import objective

DIMS = [5, 7, 7, 3]


def test_ensemble_equals_separately_built_networks():
    seeds, scales = [3, 11, 5], [1.0, 0.5, 2.0]
    ens = EnsembleMLP.init(3, DIMS, seeds=seeds, init_scale=scales, dtype=torch.float64)
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64)
    obj, _, _ = objective(ens, x, y, lam)
    grads = torch.autograd.grad(obj.sum(), list(ens.parameters()))
    for e in range(3):
        alone = EnsembleMLP.init(1, DIMS, seeds=[seeds[e]], init_scale=[scales[e]], dtype=torch.float64)
        for w_ens, w_alone in zip(ens.parameters(), alone.parameters()):
            assert torch.equal(w_ens[e], w_alone[0])
        obj_alone, _, _ = objective(alone, x, y, lam[e])
        grads_alone = torch.autograd.grad(obj_alone.sum(), list(alone.parameters()))
        torch.testing.assert_close(obj[e], obj_alone[0], rtol=1e-6, atol=1e-6)
        for g, g_alone in zip(grads, grads_alone):
            torch.testing.assert_close(g[e], g_alone[0], rtol=1e-6, atol=1e-6)


def test_forward_matches_plain_sequential_and_per_member_inputs():
    ens = EnsembleMLP.init(2, DIMS, seeds=[0, 1])
    x = torch.randn(4, 5)
    out = ens(x)
    assert out.shape == (2, 4, 3)
    for e in range(2):
        torch.testing.assert_close(out[e], ens.to_sequential(e)(x))
    per_member = ens(x.expand(2, 4, 5))
    torch.testing.assert_close(per_member, out)
    pre = ens.preactivations(x)
    assert [p.shape[-1] for p in pre] == DIMS[1:]
    torch.testing.assert_close(pre[-1], out)


def test_sequential_round_trip():
    nets = [nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)) for _ in range(2)]
    ens = EnsembleMLP.from_sequential(*nets)
    assert ens.members == 2 and ens.dims == [5, 7, 3]
    x = torch.randn(6, 5)
    for e, net in enumerate(nets):
        back = ens.to_sequential(e)
        torch.testing.assert_close(back(x), net(x))
        for p, q in zip(back.parameters(), net.parameters()):
            assert torch.equal(p, q)


def test_linear_without_bias_gets_zero_bias():
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 2))
    ens = EnsembleMLP.from_sequential(net)
    assert torch.equal(ens.biases[0], torch.zeros(1, 6))
    x = torch.randn(3, 4)
    torch.testing.assert_close(ens(x)[0], net(x))


@pytest.mark.parametrize(
    "net, message",
    [
        (nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), "Tanh"),
        (nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.ReLU(), nn.Linear(6, 2)), "alternating"),
        (nn.Linear(4, 2), "Sequential"),
    ],
)
def test_from_sequential_rejects_other_modules(net, message):
    with pytest.raises(ModelError, match=message):
        EnsembleMLP.from_sequential(net)


def test_param_norm_counts_weights_and_biases():
    ens = EnsembleMLP.init(2, DIMS, seeds=[0, 1])
    with torch.no_grad():
        ens.biases[1].fill_(0.5)
    expected = sum(w.square().sum((1, 2)) for w in ens.weights) + 7 * 0.25
    torch.testing.assert_close(ens.param_norm_sq(), expected)


def test_bad_input_shape_is_a_data_error():
    ens = EnsembleMLP.init(2, DIMS)
    with pytest.raises(DataError, match="d_in = 5"):
        ens(torch.randn(4, 6))
    with pytest.raises(DataError):
        ens(torch.randn(3, 4, 5))
