"""The bottleneck teacher task: shapes, determinism, standardization, and y = h(g(x)) with a
rank-dimensional code (its input Jacobian has rank ≤ rank everywhere)."""

import torch

from bnrank.config import RunConfig, validate
from bnrank.tasks import make_task
from bnrank.tasks.composition import _random_relu_net


def test_teacher_task_shapes_and_standardization():
    cfg = validate(RunConfig, {"task": {"kind": "teacher", "n_train": 200, "n_test": 50}}).task
    task, again = make_task(cfg), make_task(cfg)
    assert task.x_train.shape == (200, 30) and task.y_test.shape == (50, 30)
    assert task.metadata["true_rank"] == 3 and torch.equal(task.y_train, again.y_train)
    torch.testing.assert_close(task.y_train.mean(0), torch.zeros(30, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(task.y_train.std(0), torch.ones(30, dtype=torch.float64), rtol=0, atol=1e-12)


def test_teacher_target_factors_through_rank_dimensions():
    cfg = validate(RunConfig, {"task": {"kind": "teacher", "d_in": 6, "rank": 2, "d_out": 5, "hidden": 20,
                                        "n_train": 50, "n_test": 0}}).task
    gen = torch.Generator().manual_seed(cfg.seed)
    g = _random_relu_net(gen, cfg.d_in, cfg.hidden, cfg.rank, cfg.bias_std)
    h = _random_relu_net(gen, cfg.rank, cfg.hidden, cfg.d_out, cfg.bias_std)
    x = torch.randn(cfg.n_train, cfg.d_in, generator=gen, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: h(g(v)), x[0])
    assert torch.linalg.matrix_rank(jac).item() <= 2
    task = make_task(cfg)
    x_std = (x - x.mean(0)) / x.std(0)
    torch.testing.assert_close(task.x_train, x_std, rtol=0, atol=1e-12)
