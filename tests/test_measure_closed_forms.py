"""analyze on networks whose every measurement is known in closed form (docs/theory.md §3, §4)."""

import numpy as np
import pytest
import torch

from bnrank import EnsembleMLP, analyze, linear_cost, linear_expansion


def _permutation(d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64)[torch.randperm(d, generator=gen)]


def balanced_linear_net(s: list[float], dims: list[int], seed: int = 0) -> tuple[EnsembleMLP, np.ndarray]:
    """A depth-L ReLU net that computes A = P_L diag(s) P_0ᵀ on the positive orthant, and A.

    W_ℓ = P_ℓ S^{1/L} P_{ℓ-1}ᵀ with permutation matrices P_ℓ: the balanced minimizer of
    docs/theory.md §3, with non-negative entries, so on inputs x > 0 every pre-activation is ≥ 0
    and the ReLUs act as identities; biases are zero.
    """
    gen = torch.Generator().manual_seed(seed)
    depth, r = len(dims) - 1, len(s)
    perms = [_permutation(d, gen)[:, :r] for d in dims]
    root = torch.diag(torch.tensor(s, dtype=torch.float64) ** (1.0 / depth))
    weights = [(perms[i + 1] @ root @ perms[i].T)[None] for i in range(depth)]
    biases = [torch.zeros(1, d, dtype=torch.float64) for d in dims[1:]]
    a = perms[-1] @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ perms[0].T
    return EnsembleMLP(weights, biases), a.numpy()


S = [3.0, 1.5, 0.4]
DIMS = [5, 7, 6, 8, 7, 4]  # L = 5


@pytest.fixture(scope="module")
def linear_case():
    net, a = balanced_linear_net(S, DIMS)
    x = torch.rand(12, DIMS[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    return net, a, analyze(net, x)


def test_layers_match_closed_forms(linear_case):
    _, _, res = linear_case
    L, s = len(DIMS) - 1, np.array(S)
    root = np.sort(s ** (1 / L))[::-1]
    for row in res.layers.itertuples():
        expected = np.zeros(min(row.fan_in, row.fan_out))
        expected[: len(S)] = root
        np.testing.assert_allclose(row.singular_values, expected, atol=1e-14)
        assert row.singular_values.dtype == np.float64
        assert row.frob_sq == pytest.approx(np.sum(s ** (2 / L)), rel=1e-14)
        assert row.bias_sq == 0
        assert row.rank == np.sum(root > 0.1) == 3
        assert row.near_one == np.sum(np.abs(root - 1) < 0.25)
        assert row.budget == pytest.approx(np.sum(root**2 - 1 - np.log(root**2)), rel=1e-12)
    hidden = res.layers[res.layers.layer < L]
    np.testing.assert_allclose(hidden.nonlin_impact, 0, atol=0)
    np.testing.assert_allclose(hidden.balance_error, 0, atol=1e-15)
    assert res.layers[res.layers.layer == L].balance_error.isna().all()


def test_points_match_closed_forms(linear_case):
    _, a, res = linear_case
    L = len(DIMS) - 1
    r0, r1, _ = linear_expansion(a)
    assert (res.points.jac_rank == r0).all()
    np.testing.assert_allclose(res.points.log_pdet, r1 / 2, rtol=1e-13)
    np.testing.assert_allclose(res.points.schatten, linear_cost(a, L), rtol=1e-13)
    for sv in res.points.jac_singular_values:
        np.testing.assert_allclose(sv[:3], sorted(S, reverse=True), rtol=1e-13)
        np.testing.assert_allclose(sv[3:], 0, atol=1e-14)


def test_network_matches_closed_forms(linear_case):
    _, a, res = linear_case
    L = len(DIMS) - 1
    r0, r1, _ = linear_expansion(a)
    net = res.network.iloc[0]
    assert net.depth == L and net.jac_rank == r0
    assert net.param_norm_sq == pytest.approx(linear_cost(a, L), rel=1e-13)
    assert net.schatten_max == pytest.approx(net.param_norm_sq, rel=1e-13)  # the Schatten bound is tight
    assert net.r1_lower_bound == pytest.approx(r1, rel=1e-13)
    # the balanced linear net spends its budget exactly: both sides equal
    assert net.budget_lhs == pytest.approx(net.budget_rhs, rel=1e-12)
    assert net.budget_rhs == pytest.approx(linear_cost(a, L) - r0 * L - r1, rel=1e-13)


def test_input_jacobian_is_the_matrix(linear_case):
    from bnrank.measure.jacobian import input_jacobians

    net, a, _ = linear_case
    x = torch.rand(3, DIMS[0], dtype=torch.float64) + 0.5
    with torch.no_grad():
        jac = input_jacobians(list(net.weights), net.preactivations(x)).jac
    np.testing.assert_allclose(jac[0].numpy(), np.broadcast_to(a, (3, *a.shape)), atol=1e-14)


def planted_bottleneck_net(k: int, d_in: int, width: int, d_out: int, depth: int, seed: int = 0) -> EnsembleMLP:
    """Random first and last layers around depth − 2 copies of diag(1, ..., 1, 0, ..., 0) (k ones).

    From layer 2 on, the pre-activations are copies of the first k units of σ(α_1) (≥ 0), so
    the middle layers are exact rank-k identities with no ReLU effect.
    """
    gen = torch.Generator().manual_seed(seed)
    middle = torch.diag(torch.tensor([1.0] * k + [0.0] * (width - k), dtype=torch.float64))
    weights = [torch.randn(width, d_in, generator=gen, dtype=torch.float64)]
    weights += [middle.clone() for _ in range(depth - 2)]
    weights += [torch.randn(d_out, width, generator=gen, dtype=torch.float64)]
    biases = [torch.zeros(w.shape[0], dtype=torch.float64) for w in weights]
    return EnsembleMLP([w[None] for w in weights], [b[None] for b in biases])


def test_planted_bottleneck():
    k, depth = 3, 7
    net = planted_bottleneck_net(k, d_in=6, width=10, d_out=5, depth=depth)
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = analyze(net, x)
    mid = res.layers[(res.layers.layer > 1) & (res.layers.layer < depth)]
    assert (mid["rank"] == k).all() and (mid.near_one == k).all()
    assert (mid.act_rank == k).all() and (mid.preact_rank == k).all()
    assert (mid.nonlin_impact == 0).all()
    np.testing.assert_allclose(mid.budget, 0, atol=1e-15)  # k singular values exactly 1, the rest 0
    assert res.layers.set_index("layer").loc[1, "nonlin_impact"] > 0.3  # the first layer is nonlinear
    assert res.points.jac_rank.max() == k == res.network.jac_rank.iloc[0]
    assert set(res.points.jac_rank) <= set(range(k + 1))
    net_row = res.network.iloc[0]
    assert net_row.budget_lhs <= net_row.budget_rhs
