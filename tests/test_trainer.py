
import pandas as pd
import pytest
import torch

from bnrank import EnsembleMLP, fit
from bnrank.config import TrainConfig
from bnrank.errors import DataError
from bnrank.training.rebalance import balance_error, rebalance_

DIMS = [4, 6, 6, 6, 2]


def _data(n=20):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)


def _train_cfg(optimizer="gd", lr=0.05, steps=40, **phase):
    return TrainConfig(lam=0.01, log_every=10, phases=[{"optimizer": optimizer, "steps": steps, "lr": lr, **phase}])


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_training_lowers_the_objective(optimizer):
    x, y = _data()
    model = EnsembleMLP.init(2, DIMS, seeds=[0, 1], dtype=torch.float64)
    res = fit(model, x, y, _train_cfg(optimizer, lr=0.05 if optimizer == "gd" else 0.01, steps=100), progress=False)
    first, last = res.metrics[res.metrics.step == 0], res.metrics[res.metrics.step == 100]
    assert (last.objective.to_numpy() < first.objective.to_numpy()).all()
    assert res.steps == 100 and not any(res.diverged)
    assert list(res.metrics.columns)[:3] == ["step", "phase", "member"]


def test_sgd_uses_minibatches_and_is_seeded():
    x, y = _data(24)
    cfg = TrainConfig(lam=0.01, log_every=5, phases=[{"optimizer": "sgd", "steps": 15, "lr": 0.05, "batch_size": 8}])
    runs = []
    for seed in (0, 0, 1):
        model = EnsembleMLP.init(1, DIMS, seeds=[0], dtype=torch.float64)
        runs.append(fit(model, x, y, cfg, seed=seed, progress=False).metrics)
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert not runs[0].objective.equals(runs[2].objective)


def test_diverging_member_is_frozen_and_others_are_bit_identical():
    x, y = _data()
    lrs = [0.05, 1e5, 0.02]
    full = EnsembleMLP.init(3, DIMS, seeds=[0, 1, 2])
    res = fit(full, x, y, _train_cfg(lr=lrs), progress=False)
    assert res.diverged == [False, True, False]
    assert res.diverged_step[1] is not None and res.diverged_step[1] < 10
    rows = res.metrics[res.metrics.step == 40]
    assert rows.diverged.tolist() == [False, True, False]

    kept = EnsembleMLP.init(2, DIMS, seeds=[0, 2])
    res_kept = fit(kept, x, y, _train_cfg(lr=[lrs[0], lrs[2]]), progress=False)
    for w_full, w_kept in zip(full.parameters(), kept.parameters()):
        assert torch.equal(w_full[[0, 2]], w_kept)
    a = res.metrics[res.metrics.member != 1].drop(columns="member").reset_index(drop=True)
    b = res_kept.metrics.drop(columns="member").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_phases_and_schedules_are_logged():
    x, y = _data()
    cfg = TrainConfig(
        lam=0.01, log_every=10,
        phases=[
            {"optimizer": "adam", "steps": 20, "lr": 0.01, "schedule": "cosine", "lam_factor_start": 10.0},
            {"optimizer": "gd", "steps": 20, "lr": 0.02, "momentum": 0.5},
        ],
    )
    model = EnsembleMLP.init(1, DIMS, dtype=torch.float64)
    m = fit(model, x, y, cfg, progress=False).metrics
    assert m.step.tolist() == [0, 10, 20, 30, 40]
    assert m.phase.tolist() == [0, 0, 0, 1, 1]
    assert m.lam.iloc[0] == pytest.approx(0.1) and m.lam.iloc[-1] == pytest.approx(0.01)
    assert m.lr.iloc[-1] == pytest.approx(0.02)


def test_rebalance_keeps_the_function_and_lowers_the_norm():
    model = EnsembleMLP.init(2, DIMS, seeds=[0, 1], dtype=torch.float64)
    with torch.no_grad():
        model.weights[1].mul_(torch.linspace(0.2, 3.0, 6, dtype=torch.float64)[None, :, None])
        model.biases[0].uniform_(-0.5, 0.5)
    x, _ = _data()
    before, norm_before = model(x).detach().clone(), model.param_norm_sq().detach().clone()
    assert (balance_error(model) > 0.05).all()
    rebalance_(model, sweeps=50)
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
    assert (model.param_norm_sq() <= norm_before + 1e-12).all()
    assert (balance_error(model) < 1e-6).all()


def test_rebalance_zeroes_dead_neurons():
    model = EnsembleMLP.init(1, [3, 4, 2], dtype=torch.float64)
    with torch.no_grad():
        model.weights[1][0, :, 2] = 0.0  # neuron 2 has no outgoing weight
    x = torch.randn(5, 3, dtype=torch.float64)
    before = model(x).detach().clone()
    rebalance_(model)
    assert model.weights[0][0, 2].abs().sum() == 0
    torch.testing.assert_close(model(x), before)


def test_non_finite_data_is_rejected():
    x, y = _data()
    x[3, 1] = float("nan")
    model = EnsembleMLP.init(1, DIMS)
    with pytest.raises(DataError, match="NaN"):
        fit(model, x, y, _train_cfg(), progress=False)
    with pytest.raises(DataError, match="targets"):
        fit(model, _data()[0], torch.randn(20, 3), _train_cfg(), progress=False)


def test_stop_rule_freezes_each_member_as_if_trained_alone():
    x, y = _data()
    stop = {"window": 20, "rel_tol": 5e-3, "balance_tol": 0.3}  # member 0 meets it, member 1 stays unbalanced
    cfg = lambda lrs: TrainConfig(lam=0.05, log_every=10, stop=stop, phases=[{"optimizer": "gd", "steps": 400, "lr": lrs}])  # noqa: E731
    group = EnsembleMLP.init(2, DIMS, seeds=[0, 1], dtype=torch.float64)
    res = fit(group, x, y, cfg([0.2, 0.01]), progress=False)
    assert res.converged[0] and res.stopped_step[0] < res.stopped_step[1]
    final = res.metrics[res.metrics.step == res.steps]
    frozen = res.metrics[(res.metrics.member == 0) & (res.metrics.step >= res.stopped_step[0])]
    assert frozen.objective.nunique() == 1 and frozen.converged.all()
    for e, lr in enumerate([0.2, 0.01]):
        alone = EnsembleMLP.init(1, DIMS, seeds=[e], dtype=torch.float64)
        res_alone = fit(alone, x, y, cfg(lr), progress=False)
        assert res_alone.stopped_step[0] == res.stopped_step[e]
        assert res_alone.converged[0] == res.converged[e]
        for p_group, p_alone in zip(group.parameters(), alone.parameters()):
            assert torch.equal(p_group[e], p_alone[0])
        assert final.objective.iloc[e] == res_alone.metrics.objective.iloc[-1]


def test_mean_reduction_trains_the_sum_objective_at_d_out_times_lambda():
    """Adam is invariant to scaling the objective, so a "mean" run at λ follows the "sum" run at
    d_out·λ step by step, and logs its objective and mse divided by d_out."""
    x, y = _data()
    runs = {}
    for reduction, lam in (("mean", 0.01), ("sum", 0.02)):
        model = EnsembleMLP.init(1, DIMS, seeds=[0], dtype=torch.float64)
        cfg = TrainConfig(lam=lam, mse_reduction=reduction, log_every=10,
                          phases=[{"optimizer": "adam", "steps": 30, "lr": 0.01, "eps": 1e-30}])
        runs[reduction] = (fit(model, x, y, cfg, progress=False), model)
    (mean, m_model), (total, s_model) = runs["mean"], runs["sum"]
    for a, b in zip(m_model.parameters(), s_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.tensor(mean.metrics.objective.to_numpy()),
                               torch.tensor(total.metrics.objective.to_numpy()) / 2, rtol=1e-9, atol=0)
    torch.testing.assert_close(torch.tensor(mean.metrics.mse.to_numpy()),
                               torch.tensor(total.metrics.mse.to_numpy()) / 2, rtol=1e-9, atol=0)
