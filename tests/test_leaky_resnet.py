"""The Leaky ResNet family: the map against hand computation, gradients against autograd and the
generic torch.func path, ensembles against separate nets, bad configs, and the full seam
(train, save, load_run, analyze)."""

import math

import numpy as np
import pytest
import torch
import yaml

import bnrank
from bnrank.checkpoint import load_checkpoint, save_checkpoint
from bnrank.config import RunConfig, validate
from bnrank.errors import ConfigError
from bnrank.models import EnsembleLeakyResNet, build_model
from bnrank.models import functional as F
from conftest import cli, one_line_error, random_data, tiny_config

F64 = torch.float64
STEPS = [0.1, 0.3, 0.2, 0.25, 0.15]


def _net(members=3, d_in=4, d_out=3, width=6, ltilde=2.0, steps=STEPS, seed=0):
    net = EnsembleLeakyResNet.init(members, d_in, d_out, width, len(steps), ltilde, steps=steps,
                                   seeds=[seed + e for e in range(members)], dtype=F64)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for b in net.biases:
            b.copy_(torch.randn(b.shape, generator=gen, dtype=F64) * 0.3)
    return net


def test_one_layer_resnet_is_the_hand_computed_residual_map():
    # L̃ = 0, one layer (ρ = 1): f(x) = first d_out coords of (x, 0) + W ReLU((x, 0)) + b
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0], [2.0, 1.0, -1.0]], dtype=F64)
    b = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    net = EnsembleLeakyResNet([w[None]], [b[None]], d_in=2, d_out=2, effective_depth=0.0)
    x = torch.tensor([[1.0, -1.0], [2.0, 3.0]], dtype=F64)
    # x1 = (1, -1, 0): ReLU = (1, 0, 0); W·ReLU = (1, 0, 2); + b = (1.5, -1, 4); + x1 = (2.5, -2, 4)
    # x2 = (2, 3, 0): ReLU = (2, 3, 0); W·ReLU = (-4, 9, 7); + b = (-3.5, 8, 9); + x2 = (-1.5, 11, 9)
    expected = torch.tensor([[2.5, -2.0], [-1.5, 11.0]], dtype=F64)
    torch.testing.assert_close(net(x)[0], expected, rtol=0, atol=1e-15)
    # R(θ) = ½·ρ·(‖W‖² + ‖b‖²) at L̃ = 0
    assert net.param_norm_sq().item() == pytest.approx(0.5 * (w.square().sum() + b.square().sum()).item(), abs=1e-14)


def test_leak_and_steps_follow_the_formula():
    net = _net(members=1, ltilde=1.5)
    x, _ = random_data()
    h = torch.nn.functional.pad(x, (0, 2))
    for rho, w, b in zip(STEPS, net.weights, net.biases):
        h = (1 - rho * 1.5) * h + rho * (torch.relu(h) @ w[0].T + b[0])
    torch.testing.assert_close(net(x)[0], h[:, :3], rtol=0, atol=1e-13)
    sq = sum(r * (w.square().sum() + b.square().sum()) for r, w, b in zip(STEPS, net.weights, net.biases))
    assert net.param_norm_sq().item() == pytest.approx(sq.item() / (2 * 1.5), rel=1e-13)


@pytest.mark.parametrize("ltilde", [0.0, 2.0, 25.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("stacked", [False, True])
def test_fast_gradients_equal_torch_func(ltilde, reduction, stacked):
    net = _net(ltilde=ltilde)
    x, y = random_data(members=3 if stacked else None)
    lam = torch.tensor([0.0, 0.01, 0.3], dtype=F64)
    fast = net.objective_and_grads(x, y, lam, reduction=reduction)
    ref = F.objective_and_grads(net, x, y, lam, reduction)
    for a, b in zip(fast[:3], ref[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert len(fast[3]) == len(ref[3]) == len(list(net.parameters()))
    for a, b in zip(fast[3], ref[3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_gradients_equal_plain_autograd_on_a_tiny_net():
    net = _net(members=2, ltilde=3.0)
    x, y = random_data()
    lam = torch.tensor([0.05, 0.2], dtype=F64)
    obj, _, _, grads = net.objective_and_grads(x, y, lam)
    total = ((net(x) - y).square().sum(-1).mean(-1) + lam * net.param_norm_sq()).sum()
    auto = torch.autograd.grad(total, list(net.parameters()))
    for a, b in zip(grads, auto):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_ensemble_equals_separate_nets():
    net = EnsembleLeakyResNet.init(3, 4, 3, 6, 5, 2.0, steps=STEPS, seeds=[7, 8, 9], init_scale=[0.5, 1.0, 2.0], dtype=F64)
    x, y = random_data()
    lam = torch.tensor([0.0, 0.1, 0.2], dtype=F64)
    obj, _, _, grads = net.objective_and_grads(x, y, lam)
    for e, (seed, scale) in enumerate([(7, 0.5), (8, 1.0), (9, 2.0)]):
        alone = EnsembleLeakyResNet.init(1, 4, 3, 6, 5, 2.0, steps=STEPS, seeds=[seed], init_scale=scale, dtype=F64)
        for a, b in zip(alone.parameters(), net.parameters()):
            torch.testing.assert_close(a[0], b[e], rtol=0, atol=0)
        o1, _, _, g1 = alone.objective_and_grads(x, y, lam[e : e + 1])
        torch.testing.assert_close(o1[0], obj[e], rtol=0, atol=1e-13)
        for a, b in zip(g1, grads):
            torch.testing.assert_close(a[0], b[e], rtol=0, atol=1e-13)


def test_init_keeps_the_representation_scale_for_any_effective_depth():
    x = torch.randn(2000, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    for ltilde in (0.0, 1.0, 5.0, 20.0):
        net = EnsembleLeakyResNet.init(4, 10, 10, 100, 20, ltilde, dtype=F64)
        last = net.representations(x)[-1]
        ratio = last.square().sum(-1).mean().item() / x.square().sum(-1).mean().item()
        assert 0.3 < ratio < 3, (ltilde, ratio)


def test_checkpoint_round_trip_keeps_steps_and_effective_depth(tmp_path):
    net = _net()
    path = save_checkpoint(net, tmp_path / "c.safetensors")
    back = load_checkpoint(path)
    assert isinstance(back, EnsembleLeakyResNet) and back.effective_depth == 2.0 and (back.d_in, back.d_out) == (4, 3)
    assert back.steps.tolist() == net.steps.tolist()
    x, _ = random_data()
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    torch.testing.assert_close(net.select([2, 0])(x), net(x)[[2, 0]], rtol=0, atol=0)


def _leaky(**model) -> dict:
    return tiny_config(model={"kind": "leaky-resnet", "depth": 4, "width": 8, "effective_depth": 2.0} | model)


@pytest.mark.parametrize("model, message", [
    ({"steps": [0.5, 0.5, 0.5, -0.5]}, "steps must all be > 0"),
    ({"steps": [0.25, 0.25, 0.25, 0.3]}, "steps must sum to 1 (within 1e-06)"),
    ({"steps": [0.5, 0.5]}, "steps has 2 values but depth = 4"),
    ({"effective_depth": -1.0}, "model.effective_depth"),
    ({"width": 4}, "model.width (4) must be >= the task's d_in (5)"),
])
def test_bad_leaky_config_is_one_error_line_and_writes_nothing(tmp_path, model, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_leaky(**model)))
    code, _, err = cli("train", cfg, "--out", tmp_path / "run", "-q")
    one_line_error(code, err, message)
    assert not (tmp_path / "run").exists()


def test_steps_within_tolerance_are_normalized():
    cfg = validate(RunConfig, _leaky(steps=[0.1] * 2 + [0.4, 0.4 + 5e-7]))
    net = build_model(cfg.model, 5, 3, [0], [1.0], F64)
    assert math.fsum(net.steps.tolist()) == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ConfigError, match="sum to 1"):
        validate(RunConfig, _leaky(steps=[0.1] * 2 + [0.4, 0.4 + 2e-6]))


def test_train_save_load_analyze(tmp_path):
    run = bnrank.train(_leaky(), out=tmp_path / "run", progress=False)
    first, last = run.metrics.groupby("step").objective.mean().iloc[[0, -1]]
    assert last < first
    back = bnrank.load_run(tmp_path / "run")
    assert isinstance(back.model, EnsembleLeakyResNet) and back.model.effective_depth == 2.0
    x = back.task.x_train.float()
    torch.testing.assert_close(back.model(x), run.model(x), rtol=0, atol=0)
    res = bnrank.analyze(tmp_path / "run")
    assert len(res.layers) == 2 * 4 and list(res.layers.site.unique()) == [f"alpha.{i}" for i in range(1, 5)]
    assert res.layers.balance_error.isna().all() and res.network.schatten_max.isna().all()
    assert np.isfinite(res.points.jac_rank).all() and np.isfinite(res.points.ntk_trace).all()
    summary_mse = [m["mse"] for m in back.summary["members"]]
    np.testing.assert_allclose(res.network.mse, summary_mse, rtol=1e-4)
    np.testing.assert_allclose(res.network.param_norm_sq, back.model.param_norm_sq().double().detach().numpy(), rtol=1e-5)


def test_adapt_steps_follows_the_rule():
    from bnrank.config import AdaptiveSteps

    net = _net(members=3)
    x, _ = random_data()
    rho, jumps = net.steps.clone(), net.jumps(x)
    active = torch.tensor([True, False, True])
    net.adapt_steps_(x, AdaptiveSteps(rate=0.7, min_factor=0.01, max_factor=100), active)
    log_j = jumps[active].log().mean(0)
    expected = rho * torch.exp(0.7 * (log_j.mean() - log_j))
    torch.testing.assert_close(net.steps, expected / expected.sum(), rtol=1e-14, atol=0)
    net.adapt_steps_(x, AdaptiveSteps(rate=1.0), torch.tensor([False] * 3))  # nobody training: unchanged
    torch.testing.assert_close(net.steps, expected / expected.sum(), rtol=1e-14, atol=0)
    net.adapt_steps_(x, AdaptiveSteps(rate=1.0, min_factor=0.9, max_factor=1.1), active)
    assert net.steps.min() >= 0.9 / 5 * 0.9 and net.steps.max() <= 1.1 / 5 * 1.1
    assert net.steps.sum().item() == pytest.approx(1.0, abs=1e-14)


def test_training_with_adaptive_steps_moves_and_saves_them(tmp_path):
    cfg = _leaky()
    cfg["train"]["adaptive_steps"] = {"every": 10, "rate": 1.0}
    run = bnrank.train(cfg, out=tmp_path / "run", progress=False)
    steps = run.model.steps
    assert steps.sum().item() == pytest.approx(1.0, abs=1e-6) and (steps - 0.25).abs().max() > 1e-3
    back = bnrank.load_run(tmp_path / "run")
    assert back.model.steps.tolist() == steps.tolist()


def test_adaptive_steps_on_an_mlp_is_one_error_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    data = tiny_config()
    data["train"]["adaptive_steps"] = {"every": 10}
    cfg.write_text(yaml.safe_dump(data))
    code, _, err = cli("train", cfg, "--out", tmp_path / "run", "-q")
    one_line_error(code, err, "train.adaptive_steps needs a layer steps model")
    assert not (tmp_path / "run").exists()


def test_a_sweep_over_effective_depth_runs_and_matches_cells_trained_alone(tmp_path):
    from bnrank.sweep import expand, group_cells, load_spec, run_sweep

    base = _leaky()
    del base["members"]
    spec = {"name": "leaky", "base": base, "grid": {"model.effective_depth": [1.0, 4.0], "train.lam": [0.01, 0.001]},
            "trials": 1, "max_members": 2, "analyze": False}
    runs = run_sweep(spec, tmp_path / "sw", progress=False).runs
    assert len(runs) == 4 and runs.objective.notna().all()
    [cell] = [c for c in expand(load_spec(spec)) if c.config.model.effective_depth == 4.0 and c.config.train.lam == 0.01]
    alone = bnrank.train(cell.config, progress=False)
    row = runs[(runs.cell_id == cell.cell_id)]
    assert alone.summary["members"][0]["objective"] == pytest.approx(float(row.objective.iloc[0]), rel=1e-6)
    assert len(group_cells(expand(load_spec(spec)), max_members=2)) == 2  # one ensemble per L̃
