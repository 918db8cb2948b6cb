import pytest
import torch

from bnrank import EnsembleMLP
from bnrank.training.backprop import Workspace, objective_and_grads
from bnrank.training.flat import FlatParameters
from bnrank.training.objective import objective


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shared_inputs", [True, False])
@pytest.mark.parametrize("dims", [[5, 7, 7, 7, 3], [4, 2], [3, 9, 1]])
def test_hand_written_backprop_equals_autograd(dims, shared_inputs, reduction):
    members = 3
    model = EnsembleMLP.init(members, dims, seeds=[1, 2, 3], dtype=torch.float64)
    with torch.no_grad():
        for b in model.biases:
            b.normal_()
    x = torch.randn(11, dims[0], dtype=torch.float64)
    y = torch.randn(11, dims[-1], dtype=torch.float64)
    if not shared_inputs:
        x, y = torch.randn(members, 11, dims[0], dtype=torch.float64), torch.randn(members, 11, dims[-1], dtype=torch.float64)
    lam = torch.tensor([0.0, 0.1, 0.7], dtype=torch.float64)
    obj, err, norm = objective(model, x, y, lam, reduction)
    expected = torch.autograd.grad(obj.sum(), list(model.parameters()))
    obj2, err2, norm2, grads = objective_and_grads(model, x, y, lam, reduction=reduction)
    for a, b in ((obj, obj2), (err, err2), (norm, norm2)):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(expected)
    for g, e in zip(grads, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_non_finite_member_does_not_touch_the_others():
    model = EnsembleMLP.init(3, [4, 6, 2], seeds=[0, 1, 2], dtype=torch.float64)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    lam = torch.full((3,), 0.1, dtype=torch.float64)
    _, _, _, clean = objective_and_grads(model, x, y, lam)
    with torch.no_grad():
        model.weights[0][1, 0, 0] = float("inf")
    obj, _, _, grads = objective_and_grads(model, x, y, lam)
    assert not torch.isfinite(obj[1]) and torch.isfinite(obj[[0, 2]]).all()
    for g, c in zip(grads, clean):
        assert torch.equal(g[[0, 2]], c[[0, 2]])


def test_workspace_reuses_buffers_and_gives_the_same_results():
    model = EnsembleMLP.init(2, [4, 6, 6, 3], seeds=[0, 1], dtype=torch.float64)
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.2], dtype=torch.float64)
    ws = Workspace()
    expected = objective_and_grads(model, x, y, lam)
    first = objective_and_grads(model, x, y, lam, ws)
    pointers = [g.data_ptr() for g in first[3]]
    second = objective_and_grads(model, x, y, lam, ws)
    assert [g.data_ptr() for g in second[3]] == pointers
    for a, b in zip(expected[3], second[3]):
        assert torch.equal(a, b)
    batch = objective_and_grads(model, x[:3], y[:3], lam, ws)  # another batch size: its own buffers
    torch.testing.assert_close(batch[3][0], objective_and_grads(model, x[:3], y[:3], lam)[3][0])
    assert torch.equal(objective_and_grads(model, x, y, lam, ws)[3][0], expected[3][0])


def test_flat_parameters_give_the_same_gradients_and_restore_the_model():
    model = EnsembleMLP.init(3, [5, 7, 7, 3], seeds=[1, 2, 3], dtype=torch.float64)
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    lam = torch.tensor([0.0, 0.1, 0.7], dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    expected = objective_and_grads(model, x, y, lam)
    with FlatParameters(model) as flat:
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
        got = objective_and_grads(model, x, y, lam, Workspace(), flat=flat)
        for a, b in zip(expected[:3], got[:3]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for g, e in zip(got[3], expected[3]):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
        # flat.grad holds every gradient, in the order of model.parameters(); flat.member says whose
        torch.testing.assert_close(flat.grad, torch.cat([e.flatten() for e in expected[3]]), rtol=1e-12, atol=1e-12)
        assert torch.equal(flat.per_element(torch.tensor([0.0, 1.0, 2.0]))[: 3 * 5 * 7], torch.arange(3.0).repeat_interleave(35))
        assert all(p.is_contiguous() for p in model.parameters())  # each parameter keeps its layout
        flat.data.mul_(2.0)  # the model's parameters are views of the buffer
        assert torch.equal(model.weights[1], 2 * before[1])
    assert all(p.is_contiguous() for p in model.parameters())
    flat.data.zero_()  # after the block the model has its own storage again
    assert torch.equal(model.weights[1], 2 * before[1])


def test_per_element_spreads_member_values_and_regathers_only_on_change():
    model = EnsembleMLP.init(2, [3, 4, 2], seeds=[0, 1], dtype=torch.float64)
    with FlatParameters(model) as flat:
        first = flat.per_element(torch.tensor([1.0, 2.0], dtype=torch.float64), "lr")
        assert first.shape == flat.data.shape
        assert torch.equal(first[: 2 * 12], torch.tensor([1.0, 2.0], dtype=torch.float64).repeat_interleave(12))
        assert flat.per_element(torch.tensor([1.0, 2.0], dtype=torch.float64), "lr") is first
        changed = flat.per_element(torch.tensor([3.0, 2.0], dtype=torch.float64), "lr")
        assert changed.data_ptr() == first.data_ptr() and changed[0] == 3.0 and changed[-1] == 2.0
