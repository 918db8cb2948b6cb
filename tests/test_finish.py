"""The float64 L-BFGS finish: a closed-form minimum, member independence, the trainer's phase."""

import math

import pytest
import torch

from bnrank import EnsembleMLP, fit
from bnrank.config import TrainConfig
from bnrank.errors import ConfigError
from bnrank.config import validate
from bnrank.measure.certificate import certify
from bnrank.training.finish import LBFGS


def _linear_problem(members=2, d_in=6, d_out=5, width=8, n=40, lam=0.05):
    """Depth-2 linear nets W₂W₁ on whitened X (XᵀX/n = I, Y = X Aᵀ): the objective is
    ‖W₂W₁ − A‖² + λ(‖W₁‖² + ‖W₂‖²), minimized at the singular-value soft-threshold of A."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, d_in, generator=gen, dtype=torch.float64))
    x = q * math.sqrt(n)
    a = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    shapes = [(width, d_in), (d_out, width)]
    sizes = [math.prod(s) for s in shapes]

    def evaluate(theta):
        th = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            w1, w2 = [t.reshape(-1, *s) for t, s in zip(torch.split(th, sizes, 1), shapes)]
            pred = torch.einsum("ij,ekj->eik", x, w1) @ w2.transpose(1, 2)
            f = (pred - x @ a.T).square().sum(-1).mean(-1) + lam * th.square().sum(1)
            (g,) = torch.autograd.grad(f.sum(), th)
        return f.detach(), g

    theta = 0.3 * torch.randn(members, sum(sizes), generator=gen, dtype=torch.float64)
    return evaluate, theta, a, lam, shapes, sizes


def _run(evaluate, theta, lam, iters=500, gtol=1e-8):
    E = theta.shape[0]
    opt = LBFGS(evaluate, theta, torch.full((E,), lam, dtype=torch.float64), 20, gtol, torch.zeros(E, dtype=torch.bool))
    for _ in range(iters):
        if not opt.live().any():
            break
        opt.iterate()
    return opt


def test_finish_reaches_the_soft_threshold_minimum_of_a_depth_2_linear_net():
    evaluate, theta, a, lam, shapes, sizes = _linear_problem()
    opt = _run(evaluate, theta, lam)
    s = torch.linalg.svdvals(a)
    kept = (s - lam).clamp_min(0)
    best = (s - kept).square().sum() + 2 * lam * kept.sum()  # at the balanced factors, λ‖θ‖² = 2λ Σ s_i
    assert opt.converged.all() and not opt.failed.any()
    for e in range(2):
        w1, w2 = [t.reshape(s_) for t, s_ in zip(torch.split(opt.theta[e], sizes), shapes)]
        assert torch.allclose(torch.linalg.svdvals(w2 @ w1), kept, atol=1e-8)
        assert opt.f[e].item() == pytest.approx(best.item(), abs=1e-12)


def test_batched_finish_equals_separate_finishes_and_a_failed_search_freezes_one_member():
    evaluate, theta, _, lam, _, _ = _linear_problem(members=3)
    start = theta.clone()

    def poisoned(th):  # member 1's objective is NaN anywhere but its start: its line search fails
        f, g = evaluate(th)
        moved = (th[1] != start[1]).any()
        return torch.where(torch.arange(3) == 1, torch.where(moved, math.nan, f), f), g

    batched = _run(poisoned, theta, lam, iters=60, gtol=1e-30)
    assert batched.failed.tolist() == [False, True, False]
    assert torch.equal(batched.theta[1], start[1])
    clean = _run(evaluate, theta, lam, iters=60, gtol=1e-30)  # the same batch without the failure: bit-identical
    for e in (0, 2):
        assert torch.equal(batched.theta[e], clean.theta[e]) and torch.equal(batched.f[e], clean.f[e])
    # E separate finishes reach the batched one's minimum (bits may differ: BLAS kernels depend on the batch size)
    together = _run(evaluate, theta, lam)
    for e in range(3):
        alone = _run(evaluate, theta[e : e + 1], lam)
        assert torch.allclose(together.theta[e], alone.theta[0], rtol=0, atol=1e-6)
        assert together.f[e].item() == pytest.approx(alone.f[0].item(), abs=1e-12)


def _data(n=24):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)


def _cfg(gtol=1e-9, steps=400):
    return TrainConfig(lam=0.02, log_every=50, phases=[
        {"optimizer": "adam", "steps": 300, "lr": 0.01},
        {"optimizer": "lbfgs", "steps": steps, "gtol": gtol},
    ])


def test_fit_with_an_lbfgs_finish_reaches_the_ridge_solution_of_a_depth_1_net_and_certifies_it():
    """Depth 1 is ridge regression with a regularized bias: minimum (X̃ᵀX̃/N + λI)⁻¹ X̃ᵀY/N, X̃ = [X, 1]."""
    x, y = _data()
    net = EnsembleMLP.init(2, [3, 2], seeds=[0, 1])
    res = fit(net, x, y, _cfg(), progress=False)
    assert net.weights[0].dtype == torch.float64
    assert res.converged == [True, True] and res.failed == [False, False]
    finish = res.metrics[res.metrics.phase == 1]
    assert (finish.lam == 0.02).all() and finish.step.max() == res.steps == max(res.stopped_step)
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.solve(xt.T @ xt / len(x) + 0.02 * torch.eye(4, dtype=torch.float64), xt.T @ y / len(x))
    for e in range(2):
        assert torch.allclose(net.weights[0][e], sol[:3].T, atol=1e-8)
        assert torch.allclose(net.biases[0][e], sol[3], atol=1e-8)
    certs = certify(net, x, y, 0.02)
    assert [c.verdict for c in certs] == ["local_min", "local_min"], [c.reason for c in certs]


def test_fit_with_an_lbfgs_finish_keeps_members_independent():
    x, y = _data()
    full = EnsembleMLP.init(2, [3, 6, 6, 2], seeds=[0, 1])
    res = fit(full, x, y, _cfg(steps=100), progress=False)
    assert res.steps == 400 and full.weights[0].dtype == torch.float64
    other = EnsembleMLP.init(2, [3, 6, 6, 2], seeds=[2, 1])  # member 1 with another ensemble mate
    res_other = fit(other, x, y, _cfg(steps=100), progress=False)
    for p_full, p_other in zip(full.parameters(), other.parameters()):
        assert torch.equal(p_full[1], p_other[1])
    a = res.metrics[res.metrics.member == 1].reset_index(drop=True)
    b = res_other.metrics[res_other.metrics.member == 1].reset_index(drop=True)
    assert a.equals(b)


def test_lbfgs_phase_must_be_last_and_full_batch():
    with pytest.raises(ConfigError, match="last phase"):
        validate(TrainConfig, {"phases": [{"optimizer": "lbfgs"}, {"optimizer": "adam"}]})
    with pytest.raises(ConfigError, match="full batch"):
        validate(TrainConfig, {"phases": [{"optimizer": "lbfgs", "batch_size": 4}]})


def test_certificates_reach_the_run_summary_and_the_sweep_runs_table(tmp_path):
    import json

    import bnrank
    from bnrank.sweep import expand, group_cells, load_spec, run_group

    cfg = {"seed": 0, "members": 2, "dtype": "float64",
           "task": {"n_train": 16, "n_test": 0, "d_in": 3, "d_out": 2, "latent_dim": 3, "rank": 1, "hidden": 8},
           "model": {"depth": 1, "width": 4},
           "train": {"lam": 0.02, "log_every": 10, "certify": True,
                     "phases": [{"optimizer": "adam", "steps": 20, "lr": 0.01}, {"optimizer": "lbfgs", "steps": 100}]}}
    bnrank.train(cfg, out=tmp_path / "run", progress=False)
    members = json.loads((tmp_path / "run" / "summary.json").read_text())["members"]
    assert [m["cert_verdict"] for m in members] == ["local_min", "local_min"]
    assert all(m["cert_rel_grad"] <= 1e-8 and m["cert_hessian_min"] > 0 for m in members)
    base = dict(cfg)
    del base["members"]
    [group] = group_cells(expand(load_spec({"name": "t", "base": base, "grid": {"train.lam": [0.02, 0.05]}, "trials": 1,
                                            "max_members": 2, "analyze": False})), max_members=2)
    rows = run_group(group).tables["runs"]
    assert rows.cert_verdict.tolist() == ["local_min", "local_min"]
    assert rows.cert_hessian_max.iloc[0] == members[0]["cert_hessian_max"]
    plain = bnrank.train(cfg | {"train": cfg["train"] | {"certify": False}}, progress=False)
    assert not any(k.startswith("cert_") for k in plain.summary["members"][0])


def test_test_mse_of_a_float32_run_is_taken_at_its_float64_finish():
    import bnrank
    from bnrank.training.objective import mse

    cfg = {"seed": 0, "task": {"n_train": 16, "n_test": 8, "d_in": 3, "d_out": 2, "latent_dim": 3, "rank": 1, "hidden": 8},
           "model": {"depth": 2, "width": 4},
           "train": {"lam": 0.02, "phases": [{"optimizer": "adam", "steps": 20, "lr": 0.01}, {"optimizer": "lbfgs", "steps": 5}]}}
    run = bnrank.train(cfg, progress=False)
    assert run.model.weights[0].dtype == torch.float64
    with torch.no_grad():
        expected = mse(run.model(run.task.x_test.double()), run.task.y_test.double(), "sum").item()
    assert run.summary["members"][0]["test_mse"] == expected


def test_smooth_relu_is_relu_off_the_band_and_c1():
    from bnrank.training.finish import smooth_relu

    h = torch.linspace(-0.3, 0.3, 6001, dtype=torch.float64, requires_grad=True)
    s = smooth_relu(h, 0.1)
    off = h.detach().abs() >= 0.1
    assert torch.equal(s[off], torch.relu(h)[off])
    (slope,) = torch.autograd.grad(s.sum(), h)
    assert slope.min() >= 0 and slope.max() <= 1
    assert (slope[1:] - slope[:-1]).abs().max() < 1e-3  # continuous slope: steps of 1e-4 in h, 5e-4 in slope


def test_smoothed_finish_lands_on_a_kink_minimum_and_certifies_it():
    """The width-1 net of tests/test_certificate.py whose minimum lies on a kink (input −1 at
    b = w): from a point off it, the smoothed finish reaches it (objective to 1e-10 of the Newton
    solution on the kink, 0.12207214997808165), and the certificate says local_min there."""
    x = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [1.0]], dtype=torch.float64)
    t = lambda value: torch.tensor([[[value]]], dtype=torch.float64)  # noqa: E731
    net = EnsembleMLP([t(0.4), t(0.9)], [t(0.3)[0], t(0.1)[0]])
    cfg = TrainConfig(lam=0.05, log_every=50, phases=[
        {"optimizer": "lbfgs", "steps": 200, "gtol": 1e-12, "smoothing": [1e-2, 1e-4, 1e-6, 1e-8, 1e-10]}])
    res = fit(net, x, y, cfg, progress=False)
    assert res.failed == [False]
    final = res.metrics.iloc[-1]
    assert final.objective == pytest.approx(0.12207214997808165, abs=1e-10)
    w, b = net.weights[0][0, 0, 0].item(), net.biases[0][0, 0].item()
    assert abs(b - w) < 1e-8  # on the kink
    cert = certify(net, x, y, 0.05, kink_tol=1e-8)[0]
    assert cert.verdict == "local_min" and cert.sharp_kinks == 1, cert.reason


def test_smoothed_finish_keeps_members_independent():
    x, y = _data()
    cfg = TrainConfig(lam=0.02, log_every=50, phases=[
        {"optimizer": "adam", "steps": 300, "lr": 0.01},
        {"optimizer": "lbfgs", "steps": 60, "smoothing": [1e-2, 1e-3]}])
    full = EnsembleMLP.init(2, [3, 6, 6, 2], seeds=[0, 1])
    fit(full, x, y, cfg, progress=False)
    other = EnsembleMLP.init(2, [3, 6, 6, 2], seeds=[2, 1])  # member 1 with another ensemble mate
    fit(other, x, y, cfg, progress=False)
    for p_full, p_other in zip(full.parameters(), other.parameters()):
        assert torch.equal(p_full[1], p_other[1])


def test_smoothing_is_for_a_decreasing_lbfgs_homotopy_on_a_relu_mlp():
    with pytest.raises(ConfigError, match="decreasing"):
        validate(TrainConfig, {"phases": [{"optimizer": "lbfgs", "smoothing": [1e-3, 1e-2]}]})
    with pytest.raises(ConfigError, match="decreasing"):
        validate(TrainConfig, {"phases": [{"optimizer": "gd", "smoothing": [1e-3]}]})
    x, y = _data()
    linear = EnsembleMLP.init(1, [3, 4, 2], seeds=[0], activation="linear")
    cfg = TrainConfig(lam=0.02, phases=[{"optimizer": "lbfgs", "steps": 5, "smoothing": [1e-3]}])
    with pytest.raises(ConfigError, match="needs a ReLU MLP"):
        fit(linear, x, y, cfg, progress=False)
