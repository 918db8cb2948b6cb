"""Phase schedules (lr, λ) and the curvature-scaled steps resolved at a phase's start."""

import math

import pytest
import torch

from bnrank import EnsembleMLP
from bnrank.config import Phase, RunConfig, validate
from bnrank.errors import ConfigError
from bnrank.training.schedules import MOMENTUM_RANGE, lam_factor, lr_factor, resolve_phase, top_hessian_eigenvalue


def test_lr_factor_cosine_linear_constant_and_warmup():
    cos = Phase(steps=100, schedule="cosine", final_lr_factor=0.1)
    assert lr_factor(cos, 0) == pytest.approx(1.0)
    assert lr_factor(cos, 50) == pytest.approx(0.55, rel=1e-3)  # half way: (1 + 0.1) / 2
    lin = Phase(steps=100, schedule="linear", final_lr_factor=0.0)
    assert lr_factor(lin, 25) == pytest.approx(0.75)
    assert lr_factor(Phase(steps=10), 7) == 1.0
    warm = Phase(steps=20, warmup_steps=4, schedule="cosine")
    assert [lr_factor(warm, t) for t in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(warm, 4) == pytest.approx(1.0)


def test_lam_factor_is_geometric_then_one():
    p = Phase(steps=1000, lam_factor_start=100.0, lam_anneal_fraction=0.5)
    assert lam_factor(p, 0) == pytest.approx(100.0)
    assert lam_factor(p, 250) == pytest.approx(10.0)  # half of the 500-step anneal: √100
    assert lam_factor(p, 500) == 1.0 and lam_factor(p, 999) == 1.0
    assert lam_factor(Phase(steps=10), 3) == 1.0


def _tiny(members=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    model = EnsembleMLP.init(members, [3, 4, 4, 2], seeds=list(range(members)), dtype=torch.float64)
    return model, x, y


def _exact_top_eigs(model, x, y, lam):
    """Per member: largest-magnitude eigenvalue of the full Hessian (torch.autograd.functional)."""
    weights, biases = [w.detach() for w in model.weights], [b.detach() for b in model.biases]
    out = []
    for e in range(model.members):
        shapes = [w[e].shape for w in weights] + [b[e].shape for b in biases]
        flat0 = torch.cat([t[e].reshape(-1) for t in weights + biases])

        def f(flat):
            parts = [p.view(shape) for p, shape in zip(torch.split(flat, [math.prod(s) for s in shapes]), shapes)]
            ws, bs = parts[: model.depth], parts[model.depth :]
            a = x
            for i, (w, b) in enumerate(zip(ws, bs)):
                a = a @ w.T + b
                if i < model.depth - 1:
                    a = torch.relu(a)
            return (a - y).square().sum(-1).mean() + lam[e] * flat.square().sum()

        ev = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat0))
        out.append(ev[ev.abs().argmax()].item())
    return out


def test_power_iteration_matches_the_exact_hessian():
    model, x, y = _tiny()
    lam = torch.tensor([0.01, 0.1], dtype=torch.float64)
    est = top_hessian_eigenvalue(model, x, y, lam, iters=300)
    exact = _exact_top_eigs(model, x, y, lam)
    assert est.shape == (2,)
    assert est.tolist() == pytest.approx(exact, rel=1e-3)


def test_resolve_phase_scales_lr_by_curvature_and_picks_momentum():
    model, x, y = _tiny()
    lam = torch.tensor([0.01, 0.001], dtype=torch.float64)
    phase = Phase(optimizer="gd", steps=10, lr_sharpness=0.5, momentum="auto", sharpness_iters=100)
    done = resolve_phase(phase, model, x, y, lam)
    h = top_hessian_eigenvalue(model, x, y, lam, iters=100).double()
    assert done.lr == pytest.approx((0.5 / h).tolist(), rel=1e-6)
    slowest = min(2 * l * lr for l, lr in zip(lam.tolist(), done.lr))
    expected = min(max((1 - math.sqrt(slowest)) ** 2, MOMENTUM_RANGE[0]), MOMENTUM_RANGE[1])
    assert done.momentum == pytest.approx(expected)
    plain = Phase(optimizer="gd", steps=10, lr=0.1, momentum=0.9)
    assert resolve_phase(plain, model, x, y, lam) is plain


def test_resolved_lr_is_what_the_trainer_uses():
    from bnrank import fit
    from bnrank.config import TrainConfig

    model, x, y = _tiny()
    cfg = TrainConfig(lam=0.01, log_every=5, phases=[{"optimizer": "gd", "steps": 10, "lr_sharpness": 1.0, "momentum": 0.9}])
    h = top_hessian_eigenvalue(model, x, y, torch.tensor([0.01, 0.01], dtype=torch.float64)).double()
    res = fit(model, x, y, cfg, progress=False)
    logged = res.metrics[res.metrics.step == 10].sort_values("member").lr.tolist()
    assert logged == pytest.approx((1.0 / h).tolist(), rel=1e-6)
    assert not any(res.diverged)


@pytest.mark.parametrize(
    "phase, message",
    [
        ({"optimizer": "adam", "lr_sharpness": 1.0}, "lr_sharpness"),
        ({"optimizer": "adam", "momentum": "auto"}, "lr_sharpness"),
        ({"optimizer": "gd", "lr": 0.1, "lr_sharpness": 1.0}, "either lr or lr_sharpness"),
        ({"optimizer": "gd", "lr_sharpness": 0}, "lr_sharpness"),
        ({"optimizer": "gd", "momentum": 1.0}, "momentum"),
        ({"optimizer": "gd", "momentum": "fast"}, "momentum"),
    ],
)
def test_bad_curvature_phases_fail(phase, message):
    with pytest.raises(ConfigError, match=message):
        validate(RunConfig, {"train": {"phases": [phase]}})


def test_curvature_phase_round_trips_through_its_dump():
    cfg = validate(RunConfig, {"train": {"phases": [{"optimizer": "gd", "lr_sharpness": 2.0, "momentum": "auto"}]}})
    again = validate(RunConfig, cfg.model_dump(mode="json"))
    assert again.train.phases[0].lr_sharpness == 2.0 and again.train.phases[0].momentum == "auto"
