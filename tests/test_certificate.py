"""The certificate on closed-form minima of linear nets (docs/theory.md §3), planted saddles, and
ReLU nets checked against the dense Hessian."""

import math

import numpy as np
import pytest
import torch

from bnrank import EnsembleMLP
from bnrank.measure.certificate import GRAD_TOL, certify, certify_function
from bnrank.measure.curvature import _Linearized


def _whitened_data(d_in: int, n: int, a: torch.Tensor, seed: int = 0):
    """X (n, d_in) with XᵀX/n = I and Y = X Aᵀ: the fit term (1/n)‖W X − Y‖² is ‖W − A‖_F²."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d_in, generator=gen, dtype=torch.float64))
    x = q * math.sqrt(n)
    return x, x @ a.T


def _target(svals, d_out: int, d_in: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d_out, d_out, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen, dtype=torch.float64))
    k = len(svals)
    return u[:, :k] @ torch.diag(torch.tensor(svals, dtype=torch.float64)) @ v[:, :k].T, u, v


def _shrunk(a: float, lam: float, depth: int) -> float:
    """Global minimizer s ≥ 0 of (s − a)² + λ·L·s^{2/L} (the singular value a depth-L linear net keeps)."""
    if depth == 2:
        return max(a - lam, 0.0)
    best, cost = 0.0, a * a
    for s in np.linspace(1e-6, 2 * a, 20001):  # coarse grid, then Newton on s − a + λ s^{2/L − 1} = 0
        c = (s - a) ** 2 + lam * depth * s ** (2 / depth)
        if c < cost:
            best, cost = s, c
    if best > 0:
        for _ in range(50):
            g = best - a + lam * best ** (2 / depth - 1)
            h = 1 + lam * (2 / depth - 1) * best ** (2 / depth - 2)
            best -= g / h
    return best


def _linear_net(svals_kept, u, v, depth: int, width: int, seed: int = 2):
    """Balanced factors W_ℓ = U_ℓ S^{1/L} U_{ℓ-1}ᵀ of U S Vᵀ with random orthogonal hidden U_ℓ."""
    gen = torch.Generator().manual_seed(seed)
    k = len(svals_kept)
    root = torch.diag(torch.tensor(svals_kept, dtype=torch.float64) ** (1 / depth))
    frames = [v[:, :k]] + [torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=torch.float64))[0][:, :k]
                           for _ in range(depth - 1)] + [u[:, :k]]
    return [frames[i + 1] @ root @ frames[i].T for i in range(depth)]


def _linear_objective(x, y, lam, shapes):
    sizes = [math.prod(s) for s in shapes]

    def objective(theta):
        out = x.T
        for t, s in zip(torch.split(theta, sizes), shapes):
            out = t.view(s) @ out
        return (out - y.T).square().sum(0).mean() + lam * theta.square().sum()

    return objective


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_closed_form_minimum_of_a_linear_net_is_a_local_min(depth):
    lam, d_in, d_out, width = 0.1, 4, 3, 5
    a, u, v = _target([2.0, 1.0, 0.05], d_out, d_in)
    x, y = _whitened_data(d_in, 12, a)
    kept = [s for s in (_shrunk(t, lam, depth) for t in (2.0, 1.0, 0.05)) if s > 0]
    weights = _linear_net(kept, u, v, depth, width)
    theta = torch.cat([w.reshape(-1) for w in weights])
    cert = certify_function(_linear_objective(x, y, lam, [w.shape for w in weights]), theta, lam)
    assert cert.verdict == "local_min", cert.reason
    assert cert.rel_grad < 1e-12
    # rotations of the hidden layers leave C unchanged: zero eigenvalues, none negative
    assert abs(cert.hessian_min) < 1e-6 * cert.neg_tol
    # the top eigenvalue against the dense Hessian
    dense = torch.autograd.functional.hessian(_linear_objective(x, y, lam, [w.shape for w in weights]), theta)
    assert cert.hessian_max == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-8)


def test_depth_2_linear_net_missing_a_singular_value_is_a_saddle():
    """Dropping s₂ from the depth-2 minimum leaves a critical point whose Hessian has the
    eigenvalue 2λ − 2a₂ < 0 along u₂ (w v₂ᵀ, w u₂ᵀ... with w a free hidden direction)."""
    lam, d_in, d_out, width = 0.1, 4, 3, 5
    a, u, v = _target([2.0, 1.0], d_out, d_in)
    x, y = _whitened_data(d_in, 12, a)
    weights = _linear_net([2.0 - lam], u, v, 2, width)
    theta = torch.cat([w.reshape(-1) for w in weights])
    cert = certify_function(_linear_objective(x, y, lam, [w.shape for w in weights]), theta, lam)
    assert cert.rel_grad < 1e-12
    assert cert.verdict == "saddle"
    assert cert.hessian_min == pytest.approx(2 * lam - 2 * 1.0, abs=1e-6)
    # and the zero net is a saddle too (its top direction: 2λ − 2a₁)
    zero = certify_function(_linear_objective(x, y, lam, [w.shape for w in weights]), torch.zeros_like(theta), lam)
    assert zero.verdict == "saddle" and zero.hessian_min == pytest.approx(2 * lam - 2 * 2.0, abs=1e-6)


def test_not_converged_reasons():
    lam = 0.1
    a, u, v = _target([2.0, 1.0], 3, 4)
    x, y = _whitened_data(4, 12, a)
    weights = _linear_net([1.5, 0.5], u, v, 2, 5)  # not the minimum (1.9, 0.9)
    theta = torch.cat([w.reshape(-1) for w in weights])
    fn = _linear_objective(x, y, lam, [w.shape for w in weights])
    far = certify_function(fn, theta, lam)
    assert far.verdict == "not_converged" and "relative gradient" in far.reason and far.rel_grad > GRAD_TOL
    bad = certify_function(fn, torch.full_like(theta, float("nan")), lam)
    assert bad.verdict == "not_converged" and "not finite" in bad.reason
    huge = certify_function(fn, torch.full_like(theta, 1e200), lam)
    assert huge.verdict == "not_converged" and "not finite" in huge.reason
    weights0 = _linear_net([2.0, 1.0], u, v, 2, 5)
    free = certify_function(_linear_objective(x, y, 0.0, [w.shape for w in weights0]),
                            torch.cat([w.reshape(-1) for w in weights0]), 0.0)
    assert free.verdict == "not_converged" and "lambda" in free.reason


def _tiny_relu(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    net = EnsembleMLP.init(2, [3, 4, 4, 2], seeds=[0, 1], dtype=torch.float64)
    with torch.no_grad():
        for b in net.biases:
            b.normal_(0, 0.3, generator=gen)
    return net, x, y


def test_relu_eigenvalues_match_the_dense_hessian_and_the_linearized_product():
    net, x, y = _tiny_relu()
    lam = [0.01, 0.03]
    certs = certify(net, x, y, lam)
    for e, cert in enumerate(certs):
        one = net.select([e])
        params = [p.detach() for p in one.parameters()]
        shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

        def fn(theta):
            parts = [t.view(s)[0] for t, s in zip(torch.split(theta, sizes), shapes)]
            h = x
            for i in range(one.depth):
                h = (torch.relu(h) if i else h) @ parts[i].T + parts[one.depth + i]
            return (h - y).square().sum(-1).mean() + lam[e] * theta.square().sum()

        theta = torch.cat([p.reshape(-1) for p in params])
        eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(fn, theta))
        assert cert.hessian_max == pytest.approx(eig[-1].item(), rel=1e-8)
        assert cert.hessian_min == pytest.approx(eig[0].item(), abs=0.1 * cert.neg_tol)
        assert cert.verdict == "not_converged"  # a random point
        # the ReLU fast path (activation pattern held) gives the same Hessian-vector products
        pre = one.preactivations(x)
        inputs = [x] + [torch.relu(p[0]) for p in pre[:-1]]
        lin = _Linearized([w[0] for w in one.weights], inputs, [p[0] for p in pre])
        order = [t for i in range(one.depth) for t in (params[i][0].reshape(-1), params[one.depth + i][0])]
        u = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(e), dtype=torch.float64)
        hess = torch.autograd.functional.hessian(fn, theta)
        # the linearized layout is [W_1, b_1, ..., W_L, b_L]; the model's is [W_1..W_L, b_1..b_L]
        perm = torch.cat([torch.arange(sum(sizes[:j]), sum(sizes[: j + 1]))
                          for i in range(one.depth) for j in (i, one.depth + i)])
        assert torch.allclose(lin.hvp(u[perm], y, lam[e]), (hess @ u)[perm], rtol=1e-10, atol=1e-12)
        assert torch.equal(torch.cat(order), theta[perm])


def test_certify_rejects_nothing_on_a_diverged_member_and_says_why():
    net, x, y = _tiny_relu()
    with torch.no_grad():
        net.weights[1][1].fill_(float("inf"))
    certs = certify(net, x, y, 0.01)
    assert certs[1].verdict == "not_converged" and "not finite" in certs[1].reason
    assert math.isfinite(certs[0].hessian_max)


def test_kinks_count_pre_activations_at_zero():
    from bnrank.measure.kinks import kink_masks

    def kink_counts(net, x):
        return [int(c) for c in sum(m.flatten(1).sum(1) for m in kink_masks(net, x)[0])]

    net, x, y = _tiny_relu()
    assert kink_counts(net, x) == [0, 0]
    with torch.no_grad():
        net.weights[0][1, 2].zero_()
        net.biases[0][1, 2] = 0.0  # neuron 3 of layer 1 of member 1 collapsed: not a kink
        net.biases[0][0, 1] = -(net.weights[0][0, 1] @ x[4])  # member 0: input 4 at neuron 2's kink
    assert kink_counts(net, x) == [1, 0]
    cert = certify(net, x, y, 0.01)[0]
    assert cert.kinks == 1 and "kink" in cert.reason


# -- minima on ReLU kinks: a width-1 net f(x) = v·relu(w·x + b) + c on x = -1, 0, 1 ------------------

_X1 = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
_LAM1 = 0.05


def _on_kink(targets):
    """The width-1 net at its minimum over the kink manifold b = w (input -1 at the kink), by Newton
    on the smooth reduced objective of (w, v, c); returns (net, y)."""
    y = torch.tensor(targets, dtype=torch.float64)[:, None]

    def reduced(q):
        w, v, c = q
        return (v * torch.relu(w * _X1 + w) + c - y).square().mean() + _LAM1 * (2 * w * w + v * v + c * c)

    q = torch.tensor([0.5, 0.7, 0.2], dtype=torch.float64)
    for _ in range(50):
        g = torch.autograd.functional.jacobian(reduced, q)
        q = q - torch.linalg.solve(torch.autograd.functional.hessian(reduced, q), g)
    assert g.norm() < 1e-14
    w, v, c = q.tolist()
    t = lambda value: torch.tensor([[[value]]], dtype=torch.float64)  # noqa: E731
    return EnsembleMLP([t(w), t(v)], [t(w)[0], t(c)[0]]), y


def _worst_rise(net, y):
    """min over 3,000 random unit directions u and ε ∈ {1e-2, 1e-3, 1e-4} of (C(θ + εu) − C(θ)) / ε²."""
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def cost(t):  # t (S, 4): w, v, b, c
        f = t[:, 1:2] * torch.relu(t[:, 0:1] * _X1.T + t[:, 2:3]) + t[:, 3:4]
        return (f - y.T).square().mean(1) + _LAM1 * t.square().sum(1)

    u = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    base = cost(theta[None])
    return min(((cost(theta + eps * u) - base).min() / eps**2).item() for eps in (1e-2, 1e-3, 1e-4))


@pytest.mark.parametrize("side", [0.0, 1e-12, -1e-12])
def test_a_minimum_on_a_kink_is_certified_and_brute_force_agrees(side):
    net, y = _on_kink([0.0, 1.0, 1.0])
    with torch.no_grad():
        net.biases[0][0, 0] += side  # either side of the kink: PyTorch's gradient changes, the certificate does not
    cert = certify(net, _X1, y, _LAM1)[0]
    assert cert.verdict == "local_min", cert.reason
    assert (cert.kinks, cert.sharp_kinks, cert.concave_kinks, cert.tangent_dim) == (1, 1, 0, 3)
    if side > 0:
        assert cert.rel_grad > 0.1  # the one-sided gradient does not vanish at this minimum
    assert cert.rel_subgrad < 1e-10
    assert cert.hessian_min > 0.1
    assert _worst_rise(net, y) > 0.05


def test_a_concave_kink_is_a_saddle_and_brute_force_descends():
    net, y = _on_kink([1.0, 1.0, 2.0])
    cert = certify(net, _X1, y, _LAM1)[0]
    assert cert.verdict == "saddle" and cert.concave_kinks == 1, cert.reason
    assert cert.rel_subgrad < 1e-10  # stationary in the chain-rule sense, yet not a minimum
    assert _worst_rise(net, y) < -1.0  # C falls at first order


def test_a_collapsed_neuron_that_should_switch_on_is_a_saddle_with_the_exact_gain():
    net, y = _on_kink([2.0, 1.0, 1.0])  # here the reduced minimum has w = v = 0: the neuron collapsed
    assert net.weights[0].abs().max() < 1e-12
    cert = certify(net, _X1, y, _LAM1)[0]
    assert cert.verdict == "saddle" and cert.collapsed == 1 and cert.kinks == 0, cert.reason
    # S(u) = |Σ_n G_n relu(u·(x_n, 1))| over the unit circle, G = ∂fit/∂f = 2(f − y)/N
    f = net(_X1)[0]
    g = 2 * (f - y) / 3
    angle = torch.linspace(0, 2 * math.pi, 200001, dtype=torch.float64)
    u = torch.stack([angle.cos(), angle.sin()], 1)
    z = torch.cat([_X1, torch.ones_like(_X1)], 1)
    gain = (torch.relu(u @ z.T) @ g).abs().max().item()
    assert cert.escape_ratio * 2 * _LAM1 == pytest.approx(gain, rel=1e-8)
    # moving a = b = ε along the best direction lowers C by ε²(2λ − S)/2 per unit ‖direction‖²
    assert _worst_rise(net, y) == pytest.approx(0.5 * (2 * _LAM1 - gain), rel=0.05)


def test_a_collapsed_neuron_with_nothing_to_gain_stays_a_minimum():
    net, y = _on_kink([1.0, 1.0, 1.0])
    cert = certify(net, _X1, y, _LAM1)[0]
    assert cert.verdict == "local_min" and cert.collapsed == 1 and cert.escape_ratio <= 1, cert.reason
    assert _worst_rise(net, y) > 0


def test_kink_certificate_is_the_plain_one_without_kinks():
    net, x, y = _tiny_relu()
    for cert in certify(net, x, y, [0.01, 0.03]):
        assert cert.kinks == 0 and cert.rel_subgrad == cert.rel_grad and cert.tangent_dim == sum(p[0].numel() for p in net.parameters())


# -- one-sided kinks: C(θ) = θ₁² − ½θ₂² + s·θ₃² + relu(θ₁ + θ₂) + relu(θ₁ − θ₂) at θ = 0 ----------------
# Both kinks have slope D* = 0 and upstream c = 1: C rises at first order where θ₁ + θ₂ > 0 or
# θ₁ − θ₂ > 0 and is flat on the other side. F_{D*} = θ₁² − ½θ₂² + s·θ₃² has curvature −1 along θ₂,
# but θ₂ crosses one kink on its rising side whichever way it goes.

def _wedge(s: float):
    from bnrank.measure.kinks import KinkAnalysis

    def smooth(t):
        return t[0] ** 2 - 0.5 * t[1] ** 2 + s * t[2] ** 2

    def objective(t):
        return smooth(t) + torch.relu(t[0] + t[1]) + torch.relu(t[0] - t[1])

    normals = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]], dtype=torch.float64)
    kinks = KinkAnalysis(kinks=2, sharp=0, one_sided=2, concave=0, collapsed=0, slopes=torch.zeros(2, dtype=torch.float64),
                         upstream=torch.ones(2, dtype=torch.float64), rel_subgrad=0.0, escape_ratio=0.0, objective=smooth,
                         normals=torch.zeros(0, 3, dtype=torch.float64), face_normals=normals, escape_direction=None,
                         concave_normal=None)
    return objective, kinks


def _lowest_ratio(objective, scale: float) -> float:
    """min over 20,000 random unit u of C(scale·u) / scale² (C(0) = 0)."""
    u = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * scale
    return min(objective(v).item() for v in u) / scale**2


def test_negative_curvature_blocked_by_one_sided_kinks_is_undecided_not_a_saddle():
    from bnrank.measure.certificate import certify_with_direction

    objective, kinks = _wedge(1.0)
    cert, direction = certify_with_direction(objective, torch.zeros(3, dtype=torch.float64), 0.5, kinks=kinks)
    assert cert.verdict == "not_converged" and "undecided" in cert.reason and direction is None, cert.reason
    assert cert.hessian_min == pytest.approx(-1.0, abs=1e-12)  # on T = R³
    assert cert.face_min == pytest.approx(2.0, abs=1e-12)  # on the face T' = span(e₃)
    assert cert.one_sided_kinks == 2
    assert _lowest_ratio(objective, 1e-3) > 0  # brute force: θ = 0 is in fact a local minimum


def test_negative_curvature_on_the_one_sided_kinks_face_is_a_saddle_along_it():
    from bnrank.measure.certificate import certify_with_direction

    objective, kinks = _wedge(-0.5)
    cert, direction = certify_with_direction(objective, torch.zeros(3, dtype=torch.float64), 0.5, kinks=kinks)
    assert cert.verdict == "saddle" and "one-sided" in cert.reason, cert.reason
    assert cert.face_min == pytest.approx(-1.0, abs=1e-12)
    assert direction.abs().tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-12)
    assert objective(1e-3 * direction).item() == pytest.approx(-0.5e-6, rel=1e-9)  # C falls along it
