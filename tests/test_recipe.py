"""The default training recipe (bnrank.training.recipe) and the stop rule it relies on."""

import pytest
import torch

import bnrank
from bnrank import EnsembleMLP, fit
from bnrank.config import RunConfig, StopRule, TrainConfig, dump_config, load_run_config, validate
from bnrank.training.rebalance import balance_error, rebalance_
from bnrank.training.recipe import LAM_START_MAX, apply_recipe, default_adam_lr, default_init_scale, default_train_config, middle_layer
from conftest import tiny_config


@pytest.mark.parametrize("depth", [1, 2, 8, 16, 25])
@pytest.mark.parametrize("lam", [0.0, 1e-3, 1e-2, [1e-3, 1e-2]])
def test_recipe_config_validates(depth, lam):
    cfg = default_train_config(depth, lam)
    adam, descent, polish = cfg.phases
    assert adam.optimizer == "adam" and descent.optimizer == polish.optimizer == "gd"
    assert descent.lr_sharpness and polish.lr_sharpness
    assert cfg.stop.min_steps == adam.steps + descent.steps + cfg.stop.window  # checked in the polish phase only
    assert cfg.stop.rel_tol == 1e-5 and cfg.stop.balance_tol == 0.01
    lam_max = max(lam) if isinstance(lam, list) else lam
    assert 1.0 <= adam.lam_factor_start and (lam_max == 0 or lam_max * adam.lam_factor_start <= LAM_START_MAX * (1 + 1e-12) or adam.lam_factor_start == 1.0)
    members = len(lam) if isinstance(lam, list) else 1
    again = validate(RunConfig, {"members": members, "train": cfg.model_dump(mode="json")})
    assert again.train == cfg


def test_recipe_scales_with_depth():
    shallow, deep = default_train_config(8), default_train_config(16)
    assert deep.phases[0].steps == 2 * shallow.phases[0].steps
    assert deep.phases[0].lr == pytest.approx(shallow.phases[0].lr / 4)  # Adam's step ∝ (8/L)² beyond L = 8
    assert default_train_config(4).phases[0].lr == shallow.phases[0].lr == default_adam_lr(8) == pytest.approx(3e-3)
    assert default_train_config(8, 1e-2).phases[0].lam_factor_start == 1.0  # λ start capped at LAM_START_MAX
    assert default_train_config(8, 1e-3).phases[0].lam_factor_start == pytest.approx(10.0)
    with pytest.raises(ValueError):
        default_train_config(0)


def test_init_scale_and_middle_layer():
    for depth in (2, 8, 16, 30):
        assert default_init_scale(depth) ** depth == pytest.approx(2.0**-3)
    assert [middle_layer(d) for d in (1, 2, 7, 8, 9, 16)] == [1, 1, 4, 4, 5, 8]


def test_apply_recipe_keeps_the_task_and_round_trips_through_yaml(tmp_path):
    base = tiny_config()
    base["train"] = {"lam": 0.01, "log_every": 10}
    out = apply_recipe(base, adam_steps=20, descent_steps=10, polish_steps=10)
    cfg = validate(RunConfig, out)
    assert cfg.task.n_train == 32 and cfg.model.depth == 3 and cfg.train.lam == 0.01
    assert cfg.model.init_scale == pytest.approx(default_init_scale(3))
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    assert load_run_config(path) == cfg


def test_recipe_trains_end_to_end():
    base = tiny_config()
    base["train"] = {"lam": 0.01, "log_every": 10}
    # The GD phases assume Adam got near a minimum (heavy ball at μ = 0.9995 overshoots far from
    # one): at 300 Adam steps this tiny net still has a large gradient and its GD phase diverges.
    run = bnrank.train(apply_recipe(base, adam_steps=1000, descent_steps=100, polish_steps=100, window=20), progress=False)
    m = run.metrics
    assert sorted(m.phase.unique()) == [0, 1, 2] and not run.members.diverged.any()
    assert (m[m.step == m.step.max()].objective.to_numpy() < m[m.step == 0].objective.to_numpy()).all()


def _balanced_model():
    model = EnsembleMLP.init(2, [3, 5, 5, 2], seeds=[0, 1], dtype=torch.float64)
    with torch.no_grad():
        for b in model.biases:
            b.add_(0.1)
    rebalance_(model, sweeps=50)
    return model


def _frozen_fit(model, rule):
    """A run whose objective cannot change (lr ~ 0): the stop rule decides on balance alone."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=gen, dtype=torch.float64), torch.randn(16, 2, generator=gen, dtype=torch.float64)
    cfg = TrainConfig(lam=0.01, log_every=10, stop=rule, phases=[{"optimizer": "gd", "steps": 200, "lr": 1e-300}])
    return fit(model, x, y, cfg, progress=False)


def test_stop_rule_fires_on_a_converged_balanced_run():
    model = _balanced_model()
    assert (balance_error(model) < 1e-6).all()
    res = _frozen_fit(model, StopRule(window=50, rel_tol=1e-5, balance_tol=0.01))
    assert res.stopped_early and res.steps == 50 and all(res.converged)


def test_stop_rule_waits_for_min_steps_and_for_balance():
    res = _frozen_fit(_balanced_model(), StopRule(window=50, rel_tol=1e-5, balance_tol=0.01, min_steps=120))
    assert res.stopped_early and res.steps == 120
    model = _balanced_model()
    with torch.no_grad():  # rescale a hidden layer: f unchanged, neurons unbalanced
        model.weights[0].mul_(3.0)
        model.biases[0].mul_(3.0)
        model.weights[1].div_(3.0)
    assert (balance_error(model) > 0.1).all()
    res = _frozen_fit(model, StopRule(window=50, rel_tol=1e-5, balance_tol=0.01))
    assert not res.stopped_early and res.steps == 200 and not any(res.converged)


def test_quick_run_example_uses_the_recipe():
    cfg = load_run_config("examples/fig1-quick-run.yaml")
    kinds = [p.optimizer for p in cfg.train.phases]
    assert kinds == ["adam", "gd", "gd"] and cfg.train.phases[1].lr_sharpness is not None
    assert cfg.train.stop is not None
    expected = default_init_scale(cfg.model.depth)
    assert cfg.model.init_scale == pytest.approx(expected, rel=1e-3)


def test_the_lambda_start_cap_follows_the_mse_reduction():
    # a "mean" objective's λ is worth d_out times more: the cap is LAM_START_MAX / d_out
    assert default_train_config(8, 1e-3, mse_reduction="mean", d_out=20).phases[0].lam_factor_start == 1.0
    assert default_train_config(8, 1e-5, mse_reduction="mean", d_out=20).phases[0].lam_factor_start == pytest.approx(10.0)
    assert default_train_config(8, 2e-4, mse_reduction="mean", d_out=20).phases[0].lam_factor_start == pytest.approx(
        LAM_START_MAX / 20 / 2e-4)
    assert default_train_config(8, 1e-3, mse_reduction="mean", d_out=20).mse_reduction == "mean"
    with pytest.raises(ValueError, match="d_out"):
        default_train_config(8, 1e-3, mse_reduction="mean")
    config = apply_recipe({"task": {"d_out": 10}, "model": {"depth": 4}, "train": {"lam": 1e-5, "mse_reduction": "mean"}})
    assert config["train"]["mse_reduction"] == "mean"
    assert config["train"]["phases"][0]["lam_factor_start"] == pytest.approx(10.0)  # cap 1e-3 / 1e-5 = 100 > 10
