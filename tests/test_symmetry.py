import math

import numpy as np
import pytest
import torch

from bnrank.config import RunConfig, SymmetryTask, validate
from bnrank.errors import ConfigError, DataError
from bnrank.measure.symmetry import count_crossings, orbit_collapse
from bnrank.models import EnsembleMLP
from bnrank.tasks import make_task
from bnrank.tasks.symmetry import RotationDynamics, symmetry_task

AXIS = (1.0, -2.0, 0.5)


def dynamics(**fields) -> RotationDynamics:
    return RotationDynamics.from_config(SymmetryTask(axis=AXIS, **fields))


def random_angles(x, k, generator):
    return 2 * math.pi * torch.rand(x.shape[0], k, generator=generator, dtype=x.dtype)


# -- the task -----------------------------------------------------------------------------------


def test_targets_are_invariant_under_rotations_about_the_axis_only():
    d = dynamics()
    x = 1.5 * torch.rand(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.75
    y = d.targets(x)
    angles = torch.tensor([0.3, 1.0, 2.5, -4.0], dtype=torch.float64)
    rotated = d.targets(d.orbit(x, angles))  # (200, 4, 2T)
    assert torch.allclose(rotated, y.unsqueeze(1).expand_as(rotated), atol=1e-12, rtol=0)
    other = RotationDynamics(torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64), d.kappa, d.step, d.path_length)
    moved = d.targets(other.orbit(x, angles))
    assert (moved - y.unsqueeze(1)).abs().amax() > 0.1


def test_orbits_keep_invariants_and_rotate_by_the_given_angle():
    d = dynamics()
    x = torch.tensor([[0.3, 0.4, -0.2], [1.0, 0.0, 0.0]], dtype=torch.float64)
    per_point = torch.tensor([[0.0, math.pi / 2], [math.pi, 2 * math.pi]], dtype=torch.float64)
    orbit = d.orbit(x, per_point)
    assert orbit.shape == (2, 2, 3)
    assert torch.allclose(d.invariants(orbit), d.invariants(x).unsqueeze(1).expand(2, 2, 2), atol=1e-12)
    assert torch.allclose(orbit[0, 0], x[0]) and torch.allclose(orbit[1, 1], x[1], atol=1e-12)
    perp = x[0] - (x[0] @ d.axis) * d.axis
    moved = orbit[0, 1] - (orbit[0, 1] @ d.axis) * d.axis
    assert abs(float(perp @ moved)) < 1e-12  # a quarter turn: perpendicular parts orthogonal
    assert float(torch.linalg.cross(perp, moved) @ d.axis) > 0  # right-hand rule about w


def test_path_follows_the_gradient_of_the_potential():
    d = dynamics(step=0.05, path_length=3)
    x = torch.tensor([[0.2, -0.7, 0.9]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(d.potential(x).sum(), x)
    assert torch.allclose(d.gradient(x.detach()), grad)
    path = d.path(x.detach())
    assert path.shape == (1, 4, 3)
    assert torch.allclose(path[:, 1], x.detach() - 0.05 * grad)
    assert (d.potential(path).diff(dim=1) < 0).all()
    assert d.targets(x.detach()).shape == (1, 6)


def test_plane_grid_lies_on_the_plane_orthogonal_to_the_axis():
    d = dynamics()
    u, v = d.plane_basis()
    assert torch.allclose(torch.stack([u, v, d.axis]) @ torch.stack([u, v, d.axis]).T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    points, coords = d.plane_grid(5, 2.0, offset=0.3)
    assert points.shape == (5, 5, 3) and torch.allclose(coords, torch.linspace(-2, 2, 5, dtype=torch.float64))
    assert torch.allclose(points @ d.axis, torch.full((5, 5), 0.3, dtype=torch.float64))
    assert torch.allclose(points[1, 3] - 0.3 * d.axis, coords[3] * u + coords[1] * v)


def test_task_shapes_standardization_metadata_and_determinism():
    cfg = validate(RunConfig, {"task": {"kind": "symmetry", "axis": [0, 0, 3], "n_train": 100, "n_test": 20, "path_length": 4}}).task
    assert cfg.axis == (0.0, 0.0, 1.0)
    task = make_task(cfg)
    assert task.x_train.shape == (100, 3) and task.y_train.shape == (100, 8) and task.y_test.shape == (20, 8)
    assert torch.allclose(task.y_train.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(task.y_train.std(0), torch.ones(8, dtype=torch.float64))
    assert task.metadata["true_rank"] == 2 and task.metadata["axis"] == [0.0, 0.0, 1.0]
    assert task.x_train.norm(dim=1).max() <= cfg.scale
    raw = RotationDynamics.from_config(cfg).targets(task.x_test)
    mean, std = (torch.tensor(task.metadata[k], dtype=torch.float64) for k in ("target_mean", "target_std"))
    assert torch.allclose((raw - mean) / std, task.y_test)
    again = symmetry_task(cfg)
    assert torch.equal(again.x_train, task.x_train) and torch.equal(again.y_train, task.y_train)
    gaussian = symmetry_task(SymmetryTask(distribution="gaussian", scale=0.5, n_train=50, n_test=0))
    assert gaussian.x_train.shape == (50, 3) and gaussian.x_train.norm(dim=1).max() > 0.5


def test_unstable_gradient_descent_is_refused():
    with pytest.raises(DataError, match="lower task.step or task.scale"):
        symmetry_task(SymmetryTask(step=0.5, scale=2.0, n_train=200, n_test=0))


@pytest.mark.parametrize(
    "task, message",
    [
        ({"kind": "symmetry", "axis": [0, 0, 0]}, "task.axis: axis must be a finite non-zero vector"),
        ({"kind": "symmetry", "axis": [1, 0]}, "task.axis"),
        ({"kind": "symmetry", "path_length": 0}, "task.path_length"),
        ({"kind": "symmetry", "step": -0.1}, "task.step"),
        ({"kind": "symmetry", "distribution": "cube"}, "task.distribution"),
        ({"kind": "symmetry", "rank": 2}, "task.rank: unknown key"),
        ({"kind": "torus"}, "task: kind must be 'composition', 'symmetry', 'matern-composition', 'file', 'teacher', 'linear-regression' or 'matrix-completion'"),
    ],
)
def test_bad_symmetry_configs_fail_with_one_line_naming_the_field(task, message):
    with pytest.raises(ConfigError) as info:
        validate(RunConfig, {"task": task})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_task_kind_defaults_to_composition():
    assert validate(RunConfig, {"task": {"rank": 3}}).task.kind == "composition"
    assert RunConfig().task.kind == "composition"


# -- orbit collapse -----------------------------------------------------------------------------


def test_orbit_collapse_vanishes_for_an_invariant_network():
    d = dynamics()
    first = torch.nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():  # relu(±wᵀx) depends on x through the invariant h only
        first.weight.copy_(torch.stack([d.axis, -d.axis]))
        first.bias.zero_()
    net = EnsembleMLP.from_sequential(torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(2, 4, dtype=torch.float64)))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    orbit_fn = lambda x, k, gen: d.orbit(x, random_angles(x, k, gen))  # noqa: E731
    ratio = orbit_collapse(net.preactivations, x, orbit_fn, n_orbit=6)
    assert ratio.shape == (2, 1) and ratio.dtype == torch.float64
    assert ratio.abs().max() < 1e-10


def test_orbit_collapse_of_the_identity():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    d = dynamics()
    rotations = lambda x, k, g: d.orbit(x, random_angles(x, k, g))  # noqa: E731
    # Gaussian x, rotations about an axis: E‖Rx − R'x‖ = (4/π)·E r = 4/√(2π), between orbits
    # E‖x − x'‖ = √2·E χ₃ = 4/√π, so the ratio is 1/√2.
    ratio = orbit_collapse(lambda p: [p], x, rotations, n_orbit=8, generator=gen)
    assert ratio.shape == (1,) and abs(float(ratio[0]) - 2**-0.5) < 0.03
    # Orbits of all rotations of the sphere are the whole sphere: the identity cannot tell them apart.
    sphere = x / x.norm(dim=1, keepdim=True)
    anywhere = lambda x, k, g: torch.nn.functional.normalize(torch.randn(x.shape[0], k, 3, generator=g, dtype=x.dtype), dim=-1)  # noqa: E731
    ratio = orbit_collapse(lambda p: [p, 2 * p], sphere, anywhere, n_orbit=8, generator=gen)
    assert ratio.shape == (2,) and (ratio - 1).abs().max() < 0.03


def test_orbit_collapse_checks_its_inputs():
    with pytest.raises(DataError, match="n_orbit"):
        orbit_collapse(lambda p: [p], torch.randn(5, 3), lambda x, k, g: x.unsqueeze(1).expand(5, k, 3), n_orbit=1)
    with pytest.raises(DataError, match="orbit_fn returned shape"):
        orbit_collapse(lambda p: [p], torch.randn(5, 3), lambda x, k, g: x, n_orbit=3)


# -- crossings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "curves, expected",
    [
        ([[[0, 0], [1, 1]], [[0, 1], [1, 0]]], 1),  # an X
        ([[[0, 0], [1, 0]], [[0, 1], [1, 1]]], 0),  # parallel
        ([[[0, 0], [2, 0]], [[1, 0], [1, 1]]], 0),  # touching: an endpoint on the other segment
        ([[[0, 0], [1, 1]], [[1, 1], [2, 0]]], 0),  # shared endpoint
        ([[[0, 0], [2, 0]], [[1, 0], [3, 0]]], 0),  # collinear overlap
        ([[[0, 0], [1, 0]], [[5, 5], [6, 7]]], 0),  # disjoint
        ([[[0, 0], [1, 1], [2, 0], [3, 1]], [[0, 0.6], [3, 0.6]]], 3),  # a zigzag crossing a line thrice
        ([[[0, 0], [2, 2], [2, 0], [0, 2]], [[5, 5], [6, 6]]], 0),  # a self-crossing does not count
        ([[[0, 0], [1, 1]], [[0, 1], [1, 0]], [[0.5, -1], [0.5, 2]]], 3),  # three segments through one point
    ],
)
def test_count_crossings_on_hand_made_curves(curves, expected):
    arrays = [np.array(c, dtype=float) for c in curves]
    assert count_crossings(arrays) == expected
    assert count_crossings(arrays, block=1) == expected
    assert count_crossings([torch.tensor(c) for c in arrays]) == expected


def test_count_crossings_of_many_random_lines_matches_brute_force():
    rng = np.random.default_rng(0)
    lines = [rng.normal(size=(2, 2)) for _ in range(30)]
    expected = 0
    for i in range(30):
        for j in range(i + 1, 30):
            (a, b), (c, e) = lines[i], lines[j]
            m = np.column_stack([b - a, c - e])  # a + s(b − a) = c + t(e − c)
            s, t = np.linalg.solve(m, c - a)
            expected += 0 < s < 1 and 0 < t < 1
    assert expected > 0 and count_crossings(lines, block=7) == expected


def test_count_crossings_rejects_bad_curves():
    with pytest.raises(DataError, match="curve 1"):
        count_crossings([np.zeros((3, 2)), np.zeros((1, 2))])
    with pytest.raises(DataError, match="curve 0"):
        count_crossings([np.zeros((3, 3))])
    assert count_crossings([]) == 0
