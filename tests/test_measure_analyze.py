"""analyze: inputs it accepts, bounds that hold for any parameters, Parquet round trip."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from torch import nn

import bnrank
from bnrank import DataError, EnsembleMLP, ModelError, StoreError, analyze


def _random_ensemble(dims, members=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = EnsembleMLP.init(members, dims, seeds=range(seed, seed + members), init_scale=[0.5, 1.0, 2.0][:members], dtype=torch.float64)
    with torch.no_grad():
        for b in net.biases:
            b.copy_(0.5 * torch.randn(b.shape, generator=gen, dtype=torch.float64))
    return net


def _assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame):
    arrays = [c for c in a.columns if a[c].dtype == object]
    pd.testing.assert_frame_equal(a.drop(columns=arrays), b.drop(columns=arrays))
    for c in arrays:
        for u, v in zip(a[c], b[c]):
            np.testing.assert_array_equal(u, v)


def test_sequential_equals_ensemble():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(20, 4)
    ours = analyze(seq, x)
    ref = analyze(EnsembleMLP.from_sequential(seq), x.numpy())
    for name in ("layers", "points", "network"):
        _assert_frames_equal(getattr(ours, name), getattr(ref, name))
    assert ours.layers.singular_values[0].dtype == np.float64


def test_members_are_measured_independently():
    net = _random_ensemble([3, 8, 8, 2])
    x = torch.randn(15, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randn(15, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    whole = analyze(net, x, Y=y, lam=[0.1, 0.2, 0.3], curvature=True)
    for e in range(net.members):
        alone = analyze(net.select([e]), x, Y=y, lam=[0.1, 0.2, 0.3][e], curvature=True)
        for name in ("layers", "points", "network"):
            part = getattr(whole, name)
            part = part[part.member == e].reset_index(drop=True).assign(member=0)
            got = getattr(alone, name)
            arrays = [c for c in got.columns if got[c].dtype == object]
            pd.testing.assert_frame_equal(part.drop(columns=arrays), got.drop(columns=arrays), rtol=1e-10)


@pytest.mark.parametrize("dims", [[5, 16, 16, 16, 3], [3, 12, 4, 12, 12, 6], [6, 10, 2]])
def test_schatten_and_budget_bounds_hold_on_random_nets(dims):
    net = _random_ensemble(dims)
    x = torch.randn(64, dims[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = analyze(net, x)
    pts = res.points.merge(res.network[["member", "param_norm_sq"]], on="member")
    assert (pts.schatten > 0).mean() > 0.5 and (pts.schatten <= pts.param_norm_sq).all()
    assert (res.network.budget_lhs <= res.network.budget_rhs).all()
    assert (res.network.schatten_max <= res.network.param_norm_sq).all()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    cfg = tiny_config()
    cfg["train"]["phases"][0]["steps"] = 50
    return bnrank.train(cfg, out=tmp_path_factory.mktemp("runs") / "tiny", progress=False)


def test_bounds_hold_on_a_trained_run_and_run_defaults_are_used(trained_run):
    res = analyze(trained_run.path)
    n = trained_run.task.x_train.shape[0]
    assert len(res.points) == trained_run.config.members * n
    pts = res.points.merge(res.network[["member", "param_norm_sq"]], on="member")
    assert (pts.schatten <= pts.param_norm_sq).all()
    assert (res.network.budget_lhs <= res.network.budget_rhs).all()
    members = pd.DataFrame(trained_run.summary["members"])
    np.testing.assert_allclose(res.network.lam, members.lam)
    np.testing.assert_allclose(res.network.mse, members.mse, rtol=1e-4)
    np.testing.assert_allclose(res.network.param_norm_sq, members.param_norm_sq, rtol=1e-5)
    # explicit inputs replace the run's, and then Y is not borrowed
    other = analyze(trained_run.path, trained_run.task.x_test[:5])
    assert len(other.points) == 5 * trained_run.config.members and other.network.mse.isna().all()


def test_parquet_round_trip(tmp_path, trained_run):
    res = analyze(trained_run.model, trained_run.task.x_train)
    paths = res.to_parquet(tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["layers.parquet", "network.parquet", "points.parquet"]
    for name in ("layers", "points", "network"):
        back = pd.read_parquet(tmp_path / "out" / f"{name}.parquet")
        _assert_frames_equal(getattr(res, name), back)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_bad_models_and_inputs_are_clear_errors(tmp_path):
    x = torch.randn(4, 3)
    with pytest.raises(ModelError, match="no nn.Linear layer"):
        analyze(nn.Sequential(nn.Tanh()), x)
    with pytest.raises(ModelError, match="cannot analyze a dict"):
        analyze({"w": 1}, x)
    with pytest.raises(StoreError, match="no run directory or checkpoint"):
        analyze(tmp_path / "missing", x)
    net = _random_ensemble([3, 5, 2], members=2)
    with pytest.raises(DataError, match=r"X must have shape \(N, 3\)"):
        analyze(net, torch.randn(4, 2))
    with pytest.raises(DataError, match="needs inputs X"):
        analyze(net)
    with pytest.raises(DataError, match="NaN"):
        analyze(net, torch.full((2, 3), float("nan")))
    with pytest.raises(DataError, match="Y has 2 rows"):
        analyze(net, x, Y=torch.zeros(2, 2))
    with pytest.raises(DataError, match="lam has 3 values for 2 members"):
        analyze(net, x, Y=torch.zeros(4, 2), lam=[0.1, 0.2, 0.3])
