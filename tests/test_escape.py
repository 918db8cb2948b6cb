"""Leaving saddles (bnrank.training.escape): the certificate's saddle direction descends, a step
along it lowers the objective, and the finish with escapes reaches a certified minimum."""

import pytest
import torch

from bnrank.config import TrainConfig
from bnrank.measure.certificate import certify, certify_with_directions, member_objective
from bnrank.training import fit
from bnrank.training.escape import escape_step
from test_certificate import _LAM1, _X1, _on_kink, _worst_rise


def _rates(net, y, direction):
    """(C(θ + tv) − C(θ)) / t and / t² at t = 1e-5."""
    fn, theta = member_objective(net, _X1, y, _LAM1, "sum")
    t = 1e-5
    fall = (fn(theta + t * direction) - fn(theta)).item()
    return fall / t, fall / t**2


def test_a_collapsed_neurons_direction_lowers_the_objective_at_the_predicted_rate():
    net, y = _on_kink([2.0, 1.0, 1.0])
    ((cert, direction),) = certify_with_directions(net, _X1, y, _LAM1)
    assert cert.verdict == "saddle" and cert.collapsed == 1
    assert direction.norm().item() == pytest.approx(1.0, abs=1e-12)
    gain = cert.escape_ratio * 2 * _LAM1
    assert _rates(net, y, direction)[1] == pytest.approx((2 * _LAM1 - gain) / 2, rel=1e-4)


def test_a_concave_kinks_direction_lowers_the_objective_at_first_order():
    net, y = _on_kink([1.0, 1.0, 2.0])
    ((cert, direction),) = certify_with_directions(net, _X1, y, _LAM1)
    assert cert.verdict == "saddle" and cert.concave_kinks == 1
    assert _rates(net, y, direction)[0] < -1e-3


def test_a_minimum_has_no_direction_and_escape_step_keeps_it():
    net, y = _on_kink([0.0, 1.0, 1.0])
    ((cert, direction),) = certify_with_directions(net, _X1, y, _LAM1)
    assert cert.verdict == "local_min" and direction is None
    fn, theta = member_objective(net, _X1, y, _LAM1, "sum")
    unit = torch.ones_like(theta) / theta.numel() ** 0.5
    new, before, after = escape_step(fn, theta, unit)
    assert torch.equal(new, theta) and before == after


def test_a_negative_curvature_direction_is_the_smallest_ritz_vector():
    """A depth-2 linear net with a singular value missing is a saddle (tests/test_certificate.py);
    without kinks its direction is the Hessian's eigenvector of hessian_min: vᵀHv = hessian_min."""
    from bnrank.models import EnsembleMLP

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    net = EnsembleMLP.init(1, [3, 3, 3], seeds=[0], activation="linear", bias=False).double()
    with torch.no_grad():
        net.weights[0].zero_()
        net.weights[1].zero_()
    ((cert, direction),) = certify_with_directions(net, x, y, 0.01)
    assert cert.verdict == "saddle" and cert.hessian_min < 0
    fn, theta = member_objective(net, x, y, 0.01, "sum")
    (g,) = torch.autograd.grad(fn(theta.requires_grad_(True)), theta, create_graph=True)
    (hv,) = torch.autograd.grad(g, theta, grad_outputs=direction)
    assert (direction @ hv).item() == pytest.approx(cert.hessian_min, rel=1e-8)


def _escape_config(escapes, smoothing=None):
    """The L-BFGS finish on C itself (no smoothing: its gradient along a collapsed neuron is 0)."""
    return TrainConfig(lam=_LAM1, log_every=50, phases=[
        {"optimizer": "lbfgs", "steps": 200, "gtol": 1e-12, "smoothing": smoothing, "escapes": escapes}])


def test_the_finish_with_escapes_leaves_a_saddle_for_a_certified_minimum():
    net, y = _on_kink([2.0, 1.0, 1.0])  # the collapsed-neuron saddle, C = 0.3069
    saddle = certify(net, _X1, y, _LAM1)[0].objective
    fit(net, _X1, y, _escape_config(0), progress=False)
    assert certify(net, _X1, y, _LAM1)[0].verdict == "saddle"  # without escapes the finish stays there
    res = fit(net, _X1, y, _escape_config(2), progress=False)
    cert = certify(net, _X1, y, _LAM1, kink_tol=1e-8)[0]
    assert cert.verdict == "local_min", cert.reason
    assert res.metrics.objective.iloc[-1] == pytest.approx(cert.objective, abs=1e-12)
    assert cert.objective < saddle - 0.1
    assert _worst_rise(net, y) > 0.05  # brute force: C rises in 3,000 directions


def test_escapes_leave_a_member_that_is_no_saddle_bit_identical():
    y = torch.tensor([[2.0], [1.0], [1.0]], dtype=torch.float64)
    saddle, _ = _on_kink([2.0, 1.0, 1.0])
    other = _pair(saddle)
    fit(other, _X1, y, _escape_config(0), progress=False)
    assert certify(other, _X1, y, _LAM1)[1].verdict == "local_min"  # member 1: no saddle to leave
    alone = other.select([1])
    both = _pair(saddle)
    fit(both, _X1, y, _escape_config(2), progress=False)
    assert certify(both, _X1, y, _LAM1)[0].objective < certify(other, _X1, y, _LAM1)[0].objective
    for p_both, p_alone in zip(both.parameters(), alone.parameters()):
        assert torch.equal(p_both[1:], p_alone)


def _pair(saddle):
    """Two members: the collapsed saddle and a generic start (which the finish takes to a minimum)."""
    from bnrank.models import EnsembleMLP

    t = lambda value: torch.tensor([[[value]]], dtype=torch.float64)  # noqa: E731
    start = EnsembleMLP([t(-0.8), t(0.9)], [t(0.2)[0], t(0.9)[0]])
    tensors = [saddle.tensors(), start.tensors()]
    return EnsembleMLP.from_tensors({k: torch.cat([t[k].detach() for t in tensors]) for k in tensors[0]},
                                    saddle.metadata())


def test_escapes_are_for_an_lbfgs_finish():
    from bnrank.config import validate
    from bnrank.errors import ConfigError

    with pytest.raises(ConfigError, match="escapes"):
        validate(TrainConfig, {"phases": [{"optimizer": "gd", "escapes": 1}]})
    with pytest.raises(ConfigError, match="escapes"):
        validate(TrainConfig, {"phases": [{"optimizer": "lbfgs", "escapes": -1}]})
