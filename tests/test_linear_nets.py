"""Deep linear networks (model.activation: linear, model.bias: false) end to end against the closed
forms of docs/theory.md §3: a trained net reaches the cost L·Σ s_i^{2/L} of its matrix, and every
column of analyze on a balanced linear net equals its closed form."""

import numpy as np
import pytest
import torch
from torch import nn

import bnrank
from bnrank import EnsembleMLP, analyze, linear_cost, linear_expansion
from bnrank.checkpoint import load_checkpoint, save_checkpoint
from bnrank.models import functional as F
from bnrank.tasks.linear import planted_matrix, random_orthonormal
from conftest import cli

F64 = torch.float64
S_STAR = [2.0, 1.0, 0.5]
LAM, DEPTH = 0.01, 3


def _regression_config(**train) -> dict:
    return {"seed": 0, "members": 2, "dtype": "float64",
            "task": {"kind": "linear-regression", "d_in": 3, "d_out": 3, "singular_values": S_STAR, "inputs": "whitened",
                     "n_train": 12, "n_test": 5},
            "model": {"depth": DEPTH, "width": 4, "activation": "linear", "bias": False, "init_scale": 0.5},
            "train": {"lam": LAM, "log_every": 500, "phases": [
                {"optimizer": "adam", "steps": 1000, "lr": 0.01},
                {"optimizer": "gd", "steps": 3000, "lr_sharpness": 1.0, "momentum": 0.9}]} | train}


def _product(net: EnsembleMLP) -> torch.Tensor:
    a = net.weights[0].detach()
    for w in net.weights[1:]:
        a = w.detach() @ a
    return a


def _scalar_minimizer(target: float, lam: float, depth: int) -> float:
    """argmin over s > 0 of (s − target)² + λ·L·s^{2/L} near the target: the root of
    s − target + λ s^{2/L − 1} = 0 by bisection (whitened inputs decouple the singular values)."""
    lo, hi = target / 2, target
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid - target + lam * mid ** (2 / depth - 1) < 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("linear") / "run"
    return bnrank.train(_regression_config(), out=out, progress=False)


def test_trained_linear_net_reaches_the_closed_form_cost_of_its_matrix(trained):
    net = trained.model
    assert (net.activation, net.has_bias) == ("linear", False)
    a = _product(net)
    for e in range(net.members):
        norm_sq = float(net.param_norm_sq().detach()[e])
        assert norm_sq == pytest.approx(linear_cost(a[e], DEPTH), rel=1e-6)  # balanced factors
        # the learned matrix is the regularized minimizer: A*'s singular vectors, each s_i shrunk
        s = torch.linalg.svdvals(a[e]).numpy()
        np.testing.assert_allclose(s, [_scalar_minimizer(t, LAM, DEPTH) for t in S_STAR], rtol=1e-6)
        cfg = trained.config.task
        u, _, vh = torch.linalg.svd(planted_matrix(cfg))
        np.testing.assert_allclose(np.abs(np.diag(u.T @ a[e] @ vh.T)), s, rtol=1e-6)
        # every layer carries s_i^{1/L}, the rest of its spectrum is 0
        for w in net.weights:
            sw = torch.linalg.svdvals(w.detach()[e]).numpy()
            np.testing.assert_allclose(sw[:3], s ** (1 / DEPTH), rtol=1e-6)
            assert np.all(sw[3:] < 1e-6)
    assert trained.members.balance_error.max() < 1e-6


def test_run_directory_checkpoint_and_cli_analyze_of_a_linear_net(trained, tmp_path):
    back = bnrank.load_run(trained.path)
    assert (back.model.activation, back.model.has_bias, back.config.model.activation) == ("linear", False, "linear")
    save_checkpoint(back.model, tmp_path / "c.safetensors")
    again = load_checkpoint(tmp_path / "c.safetensors")
    for p, q in zip(back.model.parameters(), again.parameters()):
        assert torch.equal(p.detach(), q.detach())
    code, out, err = cli("analyze", trained.path, "--out", tmp_path / "a", "--curvature")
    assert code == 0, err
    net = analyze(trained.path).network
    a = _product(trained.model)
    np.testing.assert_allclose(net.schatten_max, [linear_cost(m, DEPTH) for m in a], rtol=1e-12)
    np.testing.assert_allclose(net.param_norm_sq, net.schatten_max, rtol=1e-6)


def test_a_sweep_of_linear_nets_runs_and_resumes(tmp_path):
    base = _regression_config(phases=[{"optimizer": "adam", "steps": 20, "lr": 0.01}], log_every=10)
    del base["members"]
    spec = {"name": "lin", "base": base, "grid": {"model.depth": [2, 3]}, "trials": 1, "analyze": True, "analyze_points": 4}
    first = bnrank.run_sweep(spec, tmp_path / "s", progress=False)
    assert len(first.runs) == 2 and first.runs.diverged.sum() == 0
    assert set(first.runs.true_rank) == {3}
    again = bnrank.run_sweep(spec, tmp_path / "s", progress=False)
    assert again.runs.set_index("cell_id").objective.equals(first.runs.set_index("cell_id").objective)


@pytest.mark.parametrize("bias", [True, False])
def test_from_sequential_of_linear_layers_is_a_linear_net(bias):
    gen = torch.Generator().manual_seed(0)
    nets = [nn.Sequential(nn.Linear(4, 6, bias=bias), nn.Linear(6, 5, bias=bias), nn.Linear(5, 2, bias=bias)).double()
            for _ in range(2)]
    for net in nets:
        for p in net.parameters():
            p.data = torch.randn(p.shape, generator=gen, dtype=F64)
    ens = EnsembleMLP.from_sequential(*nets)
    assert (ens.activation, ens.has_bias, ens.dims) == ("linear", bias, [4, 6, 5, 2])
    x = torch.randn(7, 4, generator=gen, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(ens(x), torch.stack([n(x) for n in nets]), rtol=0, atol=1e-12)
        back = ens.to_sequential(1)
        assert all(isinstance(m, nn.Linear) for m in back)
        torch.testing.assert_close(back(x), nets[1](x), rtol=0, atol=1e-12)
    if not bias:
        jac = analyze(nets[0], x).points.jac_singular_values[0]
        w = [m.weight.detach() for m in nets[0]]
        np.testing.assert_allclose(jac, torch.linalg.svdvals(w[2] @ w[1] @ w[0]).numpy(), rtol=1e-12)


# -- every analyze column on a balanced linear net --------------------------------------------------

SIG = np.array([2.5, 1.2, 0.3])
DIMS = [5, 6, 7, 6, 4]  # L = 4


@pytest.fixture(scope="module")
def balanced():
    """W_ℓ = U_ℓ S^{1/L} U_{ℓ-1}ᵀ with random orthonormal U_ℓ (d_ℓ × r): the balanced minimizer of
    docs/theory.md §3 for A = U_L S U_0ᵀ, no biases, two members (different U's)."""
    L, r = len(DIMS) - 1, len(SIG)
    root = torch.diag(torch.tensor(SIG ** (1 / L), dtype=F64))
    members = []
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        us = [random_orthonormal(gen, d, r) for d in DIMS]
        members.append(([us[i + 1] @ root @ us[i].T for i in range(L)], us))
    weights = [torch.stack([m[0][i] for m in members]) for i in range(L)]
    net = EnsembleMLP(weights, None, activation="linear")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(9, DIMS[0], generator=gen, dtype=F64)
    y = torch.randn(9, DIMS[-1], generator=gen, dtype=F64)
    return net, [m[1] for m in members], x, y, analyze(net, x, Y=y, lam=0.05, curvature=True)


def test_every_layer_column_equals_its_closed_form(balanced):
    net, us, x, _, res = balanced
    L, k = len(DIMS) - 1, len(SIG)
    root = SIG ** (1 / L)
    assert list(res.layers.columns) == [
        "member", "layer", "operator", "site", "fan_in", "fan_out", "frob_sq", "bias_sq", "singular_values", "rank",
        "near_one", "act_singular_values", "act_rank", "preact_rank", "nonlin_impact", "balance_error", "budget"]
    for row in res.layers.itertuples():
        ell = row.layer
        assert (row.operator, row.site, row.fan_in, row.fan_out) == (f"weight.{ell}", f"alpha.{ell}", DIMS[ell - 1], DIMS[ell])
        expected = np.zeros(min(row.fan_in, row.fan_out))
        expected[:k] = root
        np.testing.assert_allclose(row.singular_values, expected, atol=1e-14)
        assert row.frob_sq == pytest.approx(np.sum(root**2), rel=1e-13) and row.bias_sq == 0
        assert row.rank == np.sum(root > 0.1) and row.near_one == np.sum(np.abs(root - 1) < 0.25)
        # α_ℓ(X) = X U_0 S^{ℓ/L} U_ℓᵀ: its singular values are those of (X U_0) S^{ℓ/L}
        z = x.numpy() @ us[row.member][0].numpy() * SIG ** (ell / L)
        act = np.zeros(min(x.shape[0], DIMS[ell]))
        act[:k] = np.linalg.svd(z, compute_uv=False)
        np.testing.assert_allclose(row.act_singular_values, act, rtol=1e-12, atol=1e-12)
        assert row.act_rank == row.preact_rank == np.sum(act > 0.1 * act[0])
        if ell < L:
            assert row.nonlin_impact == 0 and row.balance_error == pytest.approx(0, abs=1e-14)
        else:
            assert np.isnan(row.nonlin_impact) and np.isnan(row.balance_error)
        assert row.budget == pytest.approx(np.sum(root**2 - 1 - np.log(root**2)), rel=1e-12)


def _ntk_factors(x: np.ndarray, u_in: np.ndarray, u_out: np.ndarray, L: int):
    """Per layer ℓ, (G_ℓ, K_ℓ) with Θ = Σ_ℓ G_ℓ ⊗ K_ℓ the NTK of a balanced linear net:
    G_ℓ = (W_{ℓ−1}⋯W_1 X)ᵀ-Gram = X U_0 S^{2(ℓ−1)/L} U_0ᵀ Xᵀ (X Xᵀ for ℓ = 1) and
    K_ℓ = (W_L⋯W_{ℓ+1})(W_L⋯W_{ℓ+1})ᵀ = U_L S^{2(L−ℓ)/L} U_Lᵀ (I for ℓ = L)."""
    z = x @ u_in
    out = []
    for ell in range(1, L + 1):
        g = x @ x.T if ell == 1 else z @ np.diag(SIG ** (2 * (ell - 1) / L)) @ z.T
        k = np.eye(u_out.shape[0]) if ell == L else u_out @ np.diag(SIG ** (2 * (L - ell) / L)) @ u_out.T
        out.append((g, k))
    return out


def test_every_point_and_network_column_equals_its_closed_form(balanced):
    net, us, x, y, res = balanced
    L, k, N = len(DIMS) - 1, len(SIG), x.shape[0]
    assert list(res.points.columns) == ["member", "point", "jac_singular_values", "jac_rank", "log_pdet", "schatten",
                                        "ntk_trace", "sq_error"]
    assert list(res.network.columns) == ["member", "depth", "param_norm_sq", "jac_rank", "budget_point", "r1_lower_bound",
                                         "budget_lhs", "budget_rhs", "schatten_max", "ntk_top", "hessian_top", "lam", "mse",
                                         "objective", "diverged"]
    assert not res.network.diverged.any()
    for e in range(2):
        a = us[e][-1].numpy() @ np.diag(SIG) @ us[e][0].numpy().T
        r0, r1, _ = linear_expansion(a)
        factors = _ntk_factors(x.numpy(), us[e][0].numpy(), us[e][-1].numpy(), L)
        pts = res.points[res.points.member == e]
        for row in pts.itertuples():
            np.testing.assert_allclose(row.jac_singular_values[:k], SIG, rtol=1e-13)
            np.testing.assert_allclose(row.jac_singular_values[k:], 0, atol=1e-14)
        assert (pts.jac_rank == r0).all()
        np.testing.assert_allclose(pts.log_pdet, r1 / 2, rtol=1e-13)
        np.testing.assert_allclose(pts.schatten, linear_cost(a, L), rtol=1e-13)
        # NTK trace: Σ_ℓ ‖W_L⋯W_{ℓ+1}‖_F² · ‖W_{ℓ−1}⋯W_1 x‖²
        trace = sum(np.trace(k) * np.diag(g) for g, k in factors)
        np.testing.assert_allclose(pts.ntk_trace, trace, rtol=1e-12)
        pred = x.numpy() @ a.T
        sq = np.sum((pred - y.numpy()) ** 2, 1)
        np.testing.assert_allclose(pts.sq_error, sq, rtol=1e-12)

        row = res.network.iloc[e]
        cost = linear_cost(a, L)
        assert (row.member, row.depth, row.jac_rank) == (e, L, r0)
        assert row.param_norm_sq == pytest.approx(cost, rel=1e-13) and row.schatten_max == pytest.approx(cost, rel=1e-13)
        assert 0 <= row.budget_point < N and row.r1_lower_bound == pytest.approx(r1, rel=1e-12)
        assert row.budget_lhs == pytest.approx(row.budget_rhs, rel=1e-12)
        assert row.budget_rhs == pytest.approx(cost - r0 * L - r1, rel=1e-12)
        theta = sum(np.kron(g, k) for g, k in factors)  # (N·d_out)², point-major
        assert row.ntk_top == pytest.approx(np.linalg.eigvalsh(theta)[-1] / N, rel=1e-6)
        assert row.lam == 0.05
        mse = sq.mean()
        assert row.mse == pytest.approx(mse, rel=1e-12) and row.objective == pytest.approx(mse + 0.05 * cost, rel=1e-12)
        # the Hessian of the objective, dense, from torch.func (no closed form at a non-critical point)
        params = [w.detach()[e] for w in net.weights]
        sizes = [p.numel() for p in params]

        def objective(flat):
            ps = [t.reshape(p.shape) for t, p in zip(flat.split(sizes), params)]
            return F.member_objective(net, ps, x, y, torch.tensor(0.05, dtype=F64), 1.0)[0]

        hess = torch.func.hessian(objective)(torch.cat([p.reshape(-1) for p in params]))
        assert row.hessian_top == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-6)
