"""analyze for any nn.Module: chain tracing, ReLU chains equal to their Sequential twin, the
non-homogeneous subset with reasons, and models loaded from state dicts."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import cli, one_line_error
from safetensors.torch import save_file
from torch import nn

import bnrank
from bnrank import ModelError, analyze
from bnrank.measure.trace import HOMOGENEOUS_COLUMNS, ModuleAnalysis, trace_chain

TABLES = ("layers", "points", "network")


class MLP(nn.Module):
    """A ReLU MLP written as a custom module, with functional and module ReLUs."""

    def __init__(self, dims=(3, 6, 5, 2)):
        super().__init__()
        self.inp = nn.Linear(dims[0], dims[1])
        self.hidden = nn.ModuleDict({"fc": nn.Linear(dims[1], dims[2])})
        self.act = nn.ReLU()
        self.out = nn.Linear(dims[2], dims[3])

    def forward(self, x):
        return self.out(self.act(self.hidden["fc"](F.relu(self.inp(x)))))

    def twin(self) -> nn.Sequential:
        return nn.Sequential(self.inp, nn.ReLU(), self.hidden["fc"], nn.ReLU(), self.out)


class Branchy(MLP):
    """The same MLP behind data-dependent control flow, which torch.fx cannot trace."""

    def forward(self, x):
        if x.sum() > -1e30:
            return self.out(torch.relu(self.hidden["fc"](torch.relu(self.inp(x)))))
        return x


def _frames_equal(a, b):
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)


@pytest.fixture
def data():
    torch.manual_seed(0)
    return torch.randn(9, 3), torch.randn(9, 2)


@pytest.mark.parametrize("cls", [MLP, Branchy])
def test_a_custom_mlp_and_its_sequential_twin_give_identical_tables(cls, data):
    torch.manual_seed(1)
    model = cls()
    x, y = data
    got = analyze(model, x, Y=y, lam=0.01, curvature=True)
    twin = analyze(model.twin(), x, Y=y, lam=0.01, curvature=True)
    _frames_equal(got, twin)
    _frames_equal(got, analyze(bnrank.EnsembleMLP.from_sequential(model.twin()), x, Y=y, lam=0.01, curvature=True))
    assert isinstance(got, ModuleAnalysis) and got.network.hessian_top.notna().all()
    assert list(got.modules.module) == ["inp", "hidden.fc", "out"] and list(twin.modules.module) == ["0", "2", "4"]
    assert list(got.modules.activation) == ["relu", "relu", ""]
    traced_by_hooks = cls is Branchy
    assert got.unsupported.reason.str.contains("forward hooks").any() == traced_by_hooks
    assert len(got.unsupported) == traced_by_hooks


def test_a_tanh_module_gets_spectra_jacobians_and_the_reason(data, tmp_path):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x, y = data
    res = analyze(net, x, Y=y, lam=0.1)
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    x64 = x.double()
    pre1 = x64 @ w1.T + b1
    post1 = torch.tanh(pre1)
    out = post1 @ w2.T + b2
    layers, points, network = res.layers, res.points, res.network
    for got, w in zip(layers.singular_values, (w1, w2)):
        np.testing.assert_allclose(got, torch.linalg.svdvals(w).numpy(), rtol=1e-13)
    np.testing.assert_allclose(layers.act_singular_values[0], torch.linalg.svdvals(post1).numpy(), rtol=1e-13)
    np.testing.assert_allclose(layers.act_singular_values[1], torch.linalg.svdvals(out).numpy(), rtol=1e-13)
    np.testing.assert_allclose(layers.nonlin_impact[0], float((post1 - pre1).norm() / pre1.norm()), rtol=1e-13)
    jac = w2[None] * (1 - post1.square())[:, None, :] @ w1  # (N, 2, 3): W2 diag(tanh') W1
    for got, j in zip(points.jac_singular_values, jac):
        np.testing.assert_allclose(got, torch.linalg.svdvals(j).numpy(), rtol=1e-12)
    assert (points.jac_rank == 2).all()
    norm_sq = sum(float(p.detach().square().sum()) for p in net.parameters())
    mse = float((out - y.double()).square().sum(1).mean())
    np.testing.assert_allclose([network.param_norm_sq[0], network.mse[0], network.objective[0]], [norm_sq, mse, mse + 0.1 * norm_sq], rtol=1e-13)
    for name, cols in HOMOGENEOUS_COLUMNS.items():
        assert getattr(res, name)[cols].isna().all().all()
    (row,) = res.unsupported.itertuples()
    assert row.module == "0" and "Tanh between 0 and 2 is not positively homogeneous" in row.reason
    assert "budget" in row.quantities and "hessian_top" in row.quantities

    written = res.to_parquet(tmp_path / "out")
    assert set(written) == {"layers", "points", "network", "modules", "unsupported"}
    pd.testing.assert_frame_equal(pd.read_parquet(written["unsupported"]), res.unsupported)
    pd.testing.assert_frame_equal(pd.read_parquet(written["modules"]), res.modules)


def test_a_lone_linear_layer_is_a_chain_of_one(data):
    lin = nn.Linear(3, 2)
    _frames_equal(analyze(lin, data[0]), analyze(nn.Sequential(lin), data[0]))


class Mixed(nn.Module):
    """Linear layers joined by nothing, LeakyReLU (module and functional) and BatchNorm."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.d, self.e = nn.Linear(4, 4), nn.Linear(4, 2)
        self.leaky, self.bn = nn.LeakyReLU(0.2), nn.BatchNorm1d(4)

    def forward(self, x):
        return self.e(self.bn(self.d(F.leaky_relu(self.c(self.leaky(self.b(self.a(x)))), 0.3))))


def test_identity_leaky_relu_and_batchnorm_links_are_recognised_and_reported(data):
    torch.manual_seed(3)
    model = Mixed()
    expected = [("a", "identity", None), ("b", "leaky_relu", 0.2), ("c", "leaky_relu", 0.3), ("d", "BatchNorm1d", None), ("e", None, None)]
    assert [(l.path, l.activation, l.negative_slope) for l in trace_chain(model).layers] == expected
    res = analyze(model, data[0])
    assert list(res.modules.activation) == ["identity", "leaky_relu", "leaky_relu", "BatchNorm1d", ""]
    np.testing.assert_array_equal(res.modules.negative_slope, [np.nan, 0.2, 0.3, np.nan, np.nan])
    reasons = dict(zip(res.unsupported.module, res.unsupported.reason))
    assert list(reasons) == ["a", "b", "c", "d"]
    assert "identity between a and b is positively homogeneous" in reasons["a"]
    assert "leaky_relu(0.2) between b and c is positively homogeneous" in reasons["b"]
    assert "BatchNorm1d between d and e is not an elementwise positively homogeneous activation" in reasons["d"]
    assert res.layers.singular_values.map(len).tolist() == [3, 4, 4, 4, 2]
    eval_model = Mixed()
    eval_model.load_state_dict(model.state_dict())
    eval_model = eval_model.double().eval()
    x0 = data[0][:3].double()
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: eval_model(v[None])[0], x0[i])
        np.testing.assert_allclose(res.points.jac_singular_values[i], torch.linalg.svdvals(jac).numpy(), rtol=1e-12)


def test_the_jacobian_of_a_linear_chain_is_the_weight_product(data):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.Linear(5, 2)).double()
    res = analyze(net, data[0])
    w1, _, w2, _ = (p.detach() for p in net.parameters())
    assert list(res.modules.activation) == ["identity", ""]
    for got in res.points.jac_singular_values:
        np.testing.assert_allclose(got, torch.linalg.svdvals(w2 @ w1).numpy(), rtol=1e-13)


class Headed(nn.Module):
    """An MLP head behind a prefix that is not a Linear layer."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x):
        return self.head(x.square())


def test_an_mlp_head_is_measured_on_its_own_inputs(data):
    torch.manual_seed(5)
    model = Headed()
    x = data[0]
    res = analyze(model, x)
    _frames_equal(res, analyze(model.head, x.double().square()))
    assert list(res.modules.module) == ["head.0", "head.2"]
    assert "chain's input" in res.unsupported.reason[0]


def test_state_dicts_load_weights_only_and_match_the_module(tmp_path, data):
    torch.manual_seed(6)
    model = MLP()
    x = data[0]
    torch.save(model.state_dict(), tmp_path / "m.pt")
    want = analyze(model.twin(), x)
    _frames_equal(analyze(tmp_path / "m.pt", x), want)
    deep = nn.Sequential(*[m for i in range(6) for m in (nn.Linear(3, 3), nn.ReLU())], nn.Linear(3, 2))
    save_file({k: v.contiguous() for k, v in deep.state_dict().items()}, str(tmp_path / "deep.safetensors"))
    _frames_equal(analyze(tmp_path / "deep.safetensors", x), analyze(deep, x))  # layer 10 after layer 2
    torch.save(model, tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match=r"weights_only=True"):
        analyze(tmp_path / "pickled.pt", x)
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    save_file({k: v.contiguous() for k, v in bn.state_dict().items()}, str(tmp_path / "bn.safetensors"))
    with pytest.raises(ModelError, match=r"tensor '1\.\w+' of shape"):
        analyze(tmp_path / "bn.safetensors", x)


def test_cli_analyze_a_state_dict_with_a_data_file(tmp_path, data):
    torch.manual_seed(7)
    model = MLP()
    x, y = data
    torch.save(model.state_dict(), tmp_path / "m.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    code, out, err = cli("analyze", tmp_path / "m.pt", "--data", tmp_path / "d.npz", "--out", tmp_path / "a")
    assert code == 0, err
    network = pd.read_parquet(tmp_path / "a" / "network.parquet")
    want = analyze(model.twin(), x, Y=y).network
    np.testing.assert_array_equal(network.mse, want.mse)
    bad = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))
    save_file({k: v.contiguous() for k, v in bad.state_dict().items()}, str(tmp_path / "bad.safetensors"))
    code, _, err = cli("analyze", tmp_path / "bad.safetensors", "--data", tmp_path / "d.npz", "--out", tmp_path / "b")
    one_line_error(code, err, "tensor 1.weight takes 5 inputs but the layer before it gives 4")
    assert not (tmp_path / "b").exists()


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def test_shared_weights_are_a_model_error(data):
    with pytest.raises(ModelError, match="fc is called more than once"):
        analyze(Shared(), data[0])


class _Touch:
    """Unpickling this would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_with_code_in_it_is_refused_without_running_it(tmp_path, data):
    marker = tmp_path / "ran"
    torch.save({"0.weight": torch.zeros(2, 3), "trap": _Touch(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="weights_only=True"):
        analyze(tmp_path / "evil.pt", data[0])
    assert not marker.exists()


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.b(torch.relu(self.a(x)))
        h = h + self.c(torch.relu(h))
        return self.d(h)


def test_a_skip_connection_ends_the_chain_and_is_reported(data):
    res = analyze(Residual(), data[0])
    assert list(res.modules.module) == ["a", "b"]
    assert dict(zip(res.unsupported.module, res.unsupported.reason)) == {
        "b": "its output feeds 2 ops (relu, add): the chain ends here",
        "c": "not in the analysed chain (the longest one)",
        "d": "not in the analysed chain (the longest one)",
    }
