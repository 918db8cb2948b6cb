"""Leaky ResNet measurements: the Cost of Identity and its bound on random matrices, the energies
and the Hamiltonian against a hand computation on a one-unit net."""

import numpy as np
import pytest
import torch

from bnrank.measure.leaky import coi_bound, cost_of_identity, leaky_measurements, nuclear_ratio
from bnrank.models import EnsembleLeakyResNet

F64 = torch.float64


def _random_reps(seed):
    """Random R = Aᵀ (N, w) of random shape and rank, shifted and scaled."""
    gen = torch.Generator().manual_seed(seed)
    w, n = int(torch.randint(1, 12, (), generator=gen)), int(torch.randint(1, 40, (), generator=gen))
    k = int(torch.randint(1, min(w, n) + 1, (), generator=gen))
    a = torch.randn(n, k, generator=gen, dtype=F64) @ torch.randn(k, w, generator=gen, dtype=F64)
    a = a + 3 * torch.rand((), generator=gen, dtype=F64) * torch.randn(1, w, generator=gen, dtype=F64)
    return a * 10 ** (2 * torch.rand((), generator=gen, dtype=F64) - 1)


def test_cost_of_identity_is_at_least_its_bound_on_random_matrices():
    gaps = []
    for seed in range(300):
        r = _random_reps(seed)
        coi, bound = cost_of_identity(r).item(), coi_bound(r).item()
        gaps.append((coi - bound) / bound)
    assert min(gaps) > -1e-10
    assert max(gaps) > 0.1  # the bound is not an identity


def test_cost_of_identity_matches_numpy_least_squares():
    r = _random_reps(3)
    s = np.concatenate([np.maximum(r.numpy(), 0), np.ones((r.shape[0], 1))], 1)
    m = np.linalg.pinv(s) @ r.numpy()
    assert cost_of_identity(r).item() == pytest.approx(float((m**2).sum()), rel=1e-10)


def test_the_quoted_nuclear_ratio_is_no_bound_when_the_bias_row_dominates():
    # w = 1, two equal points a = 1: σ̃(A) = [[1, 1], [1, 1]], the min-norm M with M σ̃(A) = A = (1, 1)
    # is (1/2, 1/2): CoI = 1/2 < ‖A‖_*²/‖A‖_F² = 1, while ‖A‖_*²/‖σ̃(A)‖_F² = 2/4 = 1/2 holds (tight)
    r = torch.tensor([[1.0], [1.0]], dtype=F64)
    assert cost_of_identity(r).item() == pytest.approx(0.5, abs=1e-14)
    assert nuclear_ratio(r).item() == pytest.approx(1.0, abs=1e-14)
    assert coi_bound(r).item() == pytest.approx(0.5, abs=1e-14)


def test_equal_singular_values_give_nuclear_ratio_k():
    q, _ = torch.linalg.qr(torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert nuclear_ratio(q @ torch.eye(3, 10, dtype=F64) * 4.0).item() == pytest.approx(3.0, rel=1e-12)


def _one_unit_net():
    """w = d_in = d_out = 1, L = 2, ρ = (0.4, 0.6), L̃ = 2, W̃_1 = (0.5, 0.3), W̃_2 = (−1, 0.2)."""
    w = [torch.tensor([[[0.5]]], dtype=F64), torch.tensor([[[-1.0]]], dtype=F64)]
    b = [torch.tensor([[0.3]], dtype=F64), torch.tensor([[0.2]], dtype=F64)]
    return EnsembleLeakyResNet(w, b, 1, 1, effective_depth=2.0, steps=[0.4, 0.6])


def test_hamiltonian_against_a_hand_computation():
    net = _one_unit_net()
    x = torch.tensor([[1.5]], dtype=F64)
    # a_1 = (1 − 0.8)·1.5 + 0.4·(0.5·1.5 + 0.3) = 0.72; a_2 = (1 − 1.2)·0.72 + 0.6·(−0.72 + 0.2) = −0.456
    a = [1.5, 0.72, -0.456]
    torch.testing.assert_close(net(x)[0, 0, 0], torch.tensor(-0.456, dtype=F64), rtol=0, atol=1e-15)
    c, lt, rho, wt = 1 / 4, 2.0, [0.4, 0.6], [(0.5, 0.3), (-1.0, 0.2)]
    # one positive point: σ̃(a) = (a, 1), σ̃⁺ = (a, 1)/(a² + 1), so ‖v σ̃⁺‖² = v²/(a² + 1), CoI = a²/(a² + 1);
    # a negative point: σ̃(a) = (0, 1), CoI = a²
    coi = [a[0] ** 2 / (a[0] ** 2 + 1), a[1] ** 2 / (a[1] ** 2 + 1), a[2] ** 2]
    vel = [(a[1] - a[0]) / rho[0], (a[2] - a[1]) / rho[1]]
    kinetic = [c * v**2 / (ai**2 + 1) for v, ai in zip(vel, a)]
    potential = [c * lt**2 * ci for ci in coi[:2]]
    lagr = [c * (v + lt * ai) ** 2 / (ai**2 + 1) for v, ai in zip(vel, a)]
    hand_h = [k - v for k, v in zip(kinetic, potential)]
    tables = leaky_measurements(net, x)
    layers, network = tables["layers"], tables["network"]
    np.testing.assert_allclose(layers.coi, coi, rtol=1e-12)
    np.testing.assert_allclose(layers.kinetic[1:], kinetic, rtol=1e-12)
    np.testing.assert_allclose(layers.potential[1:], potential, rtol=1e-12)
    np.testing.assert_allclose(layers.hamiltonian[1:], hand_h, rtol=1e-12)
    np.testing.assert_allclose(layers.neg2h[1:], [-2 / lt * h for h in hand_h], rtol=1e-12)
    np.testing.assert_allclose(layers.lagrangian[1:], lagr, rtol=1e-12)
    np.testing.assert_allclose(layers.weight_cost[1:], [c * (u**2 + v**2) for u, v in wt], rtol=1e-12)
    np.testing.assert_allclose(layers.jump[1:], [abs(a[1] - a[0]) / abs(a[1]), abs(a[2] - a[1]) / abs(a[2])], rtol=1e-12)
    assert np.isnan(layers.jump[0]) and np.isnan(layers.hamiltonian[0])
    assert network.hamiltonian[0] == pytest.approx(np.mean(hand_h), rel=1e-12)
    spread = (max(hand_h) - min(hand_h)) / abs(np.mean(hand_h))
    assert network.hamiltonian_spread[0] == pytest.approx(spread, rel=1e-12)


def test_lagrangian_is_at_most_the_weight_cost_on_a_random_net():
    net = EnsembleLeakyResNet.init(2, 3, 3, 5, 6, 3.0, seeds=[0, 1], dtype=F64)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    tables = leaky_measurements(net, x, k_star=2)
    layers, network = tables["layers"].iloc[1:], tables["network"]
    steps = tables["layers"].layer > 0
    assert (tables["layers"][steps].lagrangian <= tables["layers"][steps].weight_cost * (1 + 1e-12)).all()
    assert (network.lagrangian_sum <= network.param_norm_sq * (1 + 1e-12)).all()
    assert (layers.coi >= layers.coi_bound * (1 - 1e-10)).all()
    assert (network.k_star == 2).all() and len(tables["layers"]) == 2 * 7


def test_resnet_has_no_normalized_hamiltonian():
    net = EnsembleLeakyResNet.init(1, 2, 2, 3, 3, 0.0, dtype=F64)
    tables = leaky_measurements(net, torch.randn(10, 2, dtype=F64))
    assert tables["layers"].neg2h.isna().all() and tables["network"].neg2h.isna().all()
    assert (tables["layers"].potential[1:] == 0).all()
