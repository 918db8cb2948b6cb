"""The model-family seam: every MLP fast path equals the generic torch.func reference path, and
analyze, checkpoints, run and sweep directories written before the seam read back unchanged."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bnrank
from bnrank.checkpoint import load_checkpoint, save_checkpoint
from bnrank.errors import ConfigError, ModelError
from bnrank.measure.curvature import _Linearized, ntk_trace
from bnrank.measure.jacobian import input_jacobians
from bnrank.models import EnsembleMLP, build_model
from bnrank.models import functional as F
from conftest import random_data

LEGACY = Path(__file__).parent / "data" / "legacy"
F64 = torch.float64


def _net(activation="relu", bias=True, members=3, dims=(4, 7, 6, 3), seed=0):
    net = EnsembleMLP.init(members, list(dims), seeds=[seed + e for e in range(members)], dtype=F64,
                           activation=activation, bias=bias)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for b in net.biases:
            b.copy_(torch.randn(b.shape, generator=gen, dtype=F64) * 0.5)
    return net


KINDS = [("relu", True), ("relu", False), ("linear", True), ("linear", False)]


@pytest.mark.parametrize("activation, bias", KINDS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("stacked", [False, True])
def test_backprop_equals_torch_func(activation, bias, reduction, stacked):
    net = _net(activation, bias)
    x, y = random_data(members=3 if stacked else None)
    lam = torch.tensor([0.0, 0.01, 0.3], dtype=F64)
    fast = net.objective_and_grads(x, y, lam, reduction=reduction)
    ref = F.objective_and_grads(net, x, y, lam, reduction)
    for a, b in zip(fast[:3], ref[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert len(fast[3]) == len(ref[3]) == len(list(net.parameters()))
    for a, b in zip(fast[3], ref[3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation, bias", KINDS)
def test_jacobians_and_ntk_trace_equal_torch_func(activation, bias):
    net = _net(activation, bias)
    x, _ = random_data()
    pre = net.preactivations(x)
    jac = input_jacobians(list(net.weights), pre, activation)
    torch.testing.assert_close(jac.jac, F.input_jacobians(net, x).detach(), rtol=0, atol=1e-10)
    inputs = [x.expand(3, *x.shape)] + [net.sigma(a) for a in pre[:-1]]
    torch.testing.assert_close(ntk_trace(inputs, jac.grad_sq, bias), F.ntk_trace(net, x).detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation, bias", KINDS)
def test_hessian_vector_products_equal_torch_func(activation, bias):
    net = _net(activation, bias)
    x, y = random_data()
    lam = torch.tensor([0.0, 0.01, 0.3], dtype=F64)
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(5)
    tangent = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    ref = F.hvp(net, x, y, lam, tangent)
    depth = net.depth
    with torch.no_grad():
        pre = net.preactivations(x)
    for e in range(3):
        lin = _Linearized([w[e] for w in net.weights], [x] + [net.sigma(a[e]) for a in pre[:-1]], [a[e] for a in pre],
                          activation == "relu", bias)
        order = [t[e] for i in range(depth) for t in ([tangent[i], tangent[depth + i]] if bias else [tangent[i]])]
        flat = torch.cat([t.reshape(-1) for t in order])
        expect = torch.cat([t[e].reshape(-1) for i in range(depth) for t in ([ref[i], ref[depth + i]] if bias else [ref[i]])])
        torch.testing.assert_close(lin.hvp(flat, y, float(lam[e])), expect, rtol=0, atol=1e-10)


def test_generic_forward_and_norm_match_the_mlp():
    net = _net()
    x, _ = random_data()
    torch.testing.assert_close(F.forward(net, x).detach(), net(x).detach(), rtol=0, atol=1e-12)
    from bnrank.models.family import EnsembleModel

    torch.testing.assert_close(EnsembleModel.param_norm_sq(net).detach(), net.param_norm_sq().detach(), rtol=0, atol=1e-12)


def test_linear_net_without_bias_is_a_matrix_product():
    net = _net("linear", bias=False)
    x, _ = random_data()
    product = net.weights[2] @ net.weights[1] @ net.weights[0]
    torch.testing.assert_close(net(x).detach(), (x @ product.transpose(1, 2)).detach(), rtol=0, atol=1e-12)
    assert len(list(net.parameters())) == 3 and net.describe() == "mlp (linear, no bias)"


@pytest.mark.parametrize("activation, bias", KINDS)
def test_checkpoint_round_trips_family_and_options(tmp_path, activation, bias):
    net = _net(activation, bias)
    save_checkpoint(net, tmp_path / "c.safetensors")
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert (back.activation, back.has_bias) == (activation, bias)
    for a, b in zip(net.parameters(), back.parameters()):
        assert torch.equal(a.detach(), b.detach())


def test_unknown_model_kind_is_one_line():
    with pytest.raises(ConfigError) as info:
        bnrank.load_run_config(None, ["model.kind=cnn"])
    assert "model: kind must be 'mlp'" in str(info.value) and "\n" not in str(info.value)


def test_capability_errors_name_the_family():
    from bnrank.models.family import EnsembleModel

    class Plain(EnsembleModel):
        kind = "plain"

    with pytest.raises(ModelError, match="re-balancing needs a homogeneous model, not plain \(model.kind 'plain'\)"):
        Plain().rebalance_()


def test_build_model_uses_the_configs_family():
    cfg = bnrank.load_run_config(None, ["model.depth=3", "model.width=5", "model.activation=linear", "model.bias=false"])
    net = build_model(cfg.model, 4, 2, [0, 1], [1.0, 1.0], F64)
    assert isinstance(net, EnsembleMLP) and net.dims == [4, 5, 5, 2] and not net.has_bias and net.activation == "linear"


# -- written before the seam --------------------------------------------------------------------


def test_legacy_run_directory_loads_and_analyze_tables_are_unchanged():
    run = bnrank.load_run(LEGACY / "run")
    assert isinstance(run.model, EnsembleMLP) and run.model.activation == "relu" and run.model.has_bias
    new = bnrank.analyze(LEGACY / "run", curvature=True)
    for name in ("layers", "points", "network"):
        old = pd.read_parquet(LEGACY / "analysis" / f"{name}.parquet")
        got = getattr(new, name)
        for col in old.columns:
            a, b = old[col].to_numpy(), got[col].to_numpy()
            if a.dtype == object:
                for u, v in zip(a, b):
                    np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)
            else:
                rtol = 1e-6 if col in ("ntk_top", "hessian_top") else 1e-12  # Lanczos' tolerance
                np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-12, err_msg=f"{name}.{col}")
    assert list(new.layers.operator[:3]) == ["weight.1", "weight.2", "weight.3"]
    assert list(new.layers.site[:3]) == ["alpha.1", "alpha.2", "alpha.3"]


def test_legacy_sweep_resumes_with_the_same_cells_and_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(LEGACY / "sweep", sweep)
    spec = {"name": "legacy", "base": {"task": {"kind": "composition", "rank": 2, "latent_dim": 4, "d_in": 5, "d_out": 4,
                                                "n_train": 12, "n_test": 6},
                                       "model": {"depth": 3, "width": 6}, "dtype": "float64",
                                       "train": {"log_every": 10, "phases": [{"optimizer": "adam", "steps": 20, "lr": 0.01}]}},
            "grid": {"model.depth": [2, 3]}, "trials": 1, "analyze": True, "analyze_points": 4, "max_members": 1}
    result = bnrank.run_sweep(spec, sweep, progress=False)
    old = pd.read_parquet(LEGACY / "full_runs.parquet").set_index("cell_id")
    new = result.runs.set_index("cell_id")
    assert sorted(new.index) == sorted(old.index)
    for col in ("objective", "mse", "test_mse", "param_norm_sq", "grad_norm", "mid_rank"):
        np.testing.assert_allclose(new.loc[old.index, col].to_numpy(float), old[col].to_numpy(float), rtol=1e-12, err_msg=col)


def test_public_names_are_not_shadowed_by_modules():
    import importlib

    importlib.import_module("bnrank.training.trainer")
    importlib.import_module("bnrank.measure.analysis")
    import bnrank.measure

    assert bnrank.train.__module__ == "bnrank.runs" and callable(bnrank.measure.analyze)
    assert bnrank.measure.analyze is bnrank.analyze
