"""Batched Jacobians, NTK and Hessian measurements against brute-force autograd on tiny nets."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from bnrank import EnsembleMLP, analyze
from bnrank.measure.jacobian import input_jacobians

DIMS = [4, 6, 5, 7, 3]


@pytest.fixture(scope="module")
def tiny():
    gen = torch.Generator().manual_seed(0)
    net = EnsembleMLP.init(members=2, dims=DIMS, seeds=[3, 4], dtype=torch.float64)
    with torch.no_grad():
        for b in net.biases:
            b.copy_(0.3 * torch.randn(b.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(9, DIMS[0], generator=gen, dtype=torch.float64)
    y = torch.randn(9, DIMS[-1], generator=gen, dtype=torch.float64)
    return net, x, y


def _flat_params(seq):
    names = [n for n, _ in seq.named_parameters()]
    shapes = [p.shape for _, p in seq.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in seq.named_parameters()])

    def unflatten(theta):
        parts = torch.split(theta, [int(np.prod(s)) for s in shapes])
        return {n: p.view(s) for n, p, s in zip(names, parts, shapes)}

    return flat, unflatten


def _param_jacobian(seq, x):
    """(N·d_out, P) Jacobian of the stacked outputs with respect to all parameters."""
    flat, unflatten = _flat_params(seq)
    jac = jacrev(lambda th: functional_call(seq, unflatten(th), (x,)))(flat)
    return jac.reshape(-1, flat.numel())


def test_input_jacobians_match_autograd(tiny):
    net, x, _ = tiny
    with torch.no_grad():
        ours = input_jacobians(list(net.weights), net.preactivations(x)).jac
    for e in range(net.members):
        ref = vmap(jacrev(net.to_sequential(e)))(x)
        torch.testing.assert_close(ours[e], ref, rtol=1e-12, atol=1e-13)


def test_ntk_trace_and_top_match_the_full_parameter_jacobian(tiny):
    net, x, _ = tiny
    res = analyze(net, x, curvature=True)
    n, d_out = x.shape[0], DIMS[-1]
    for e in range(net.members):
        jac = _param_jacobian(net.to_sequential(e), x)
        gram = jac @ jac.T
        trace = gram.diagonal().view(n, d_out).sum(1)
        pts = res.points[res.points.member == e]
        np.testing.assert_allclose(pts.ntk_trace, trace.numpy(), rtol=1e-12)
        top = torch.linalg.eigvalsh(gram)[-1].item() / n
        assert res.network.ntk_top[e] == pytest.approx(top, rel=1e-9)


def test_ntk_top_of_one_output_at_one_point_is_its_trace(tiny):
    net, x, _ = tiny
    one = EnsembleMLP([w.detach()[:, :1] if i == net.depth - 1 else w.detach() for i, w in enumerate(net.weights)],
                      [b.detach()[:, :1] if i == net.depth - 1 else b.detach() for i, b in enumerate(net.biases)])
    res = analyze(one, x[:1], curvature=True)
    np.testing.assert_allclose(res.network.ntk_top, res.points.ntk_trace, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_hessian_top_matches_the_dense_hessian(tiny, reduction):
    net, x, y = tiny
    lam = [0.05, 0.5]
    scale = 1.0 if reduction == "sum" else 1.0 / y.shape[1]
    res = analyze(net, x, Y=y, lam=lam, curvature=True, mse_reduction=reduction)
    for e in range(net.members):
        seq = net.to_sequential(e)
        flat, unflatten = _flat_params(seq)

        def objective(theta):
            pred = functional_call(seq, unflatten(theta), (x,))
            return scale * (pred - y).square().sum(-1).mean() + lam[e] * theta.square().sum()

        hess = torch.autograd.functional.hessian(objective, flat)
        top = torch.linalg.eigvalsh(hess)[-1].item()
        assert res.network.hessian_top[e] == pytest.approx(top, rel=1e-9)
        assert res.network.objective[e] == pytest.approx(objective(flat).item(), rel=1e-12)


def test_curvature_is_nan_unless_asked(tiny):
    net, x, y = tiny
    res = analyze(net, x, Y=y)
    assert res.network.ntk_top.isna().all() and res.network.hessian_top.isna().all()
    assert analyze(net, x, curvature=True).network.hessian_top.isna().all()  # no Y, no Hessian
