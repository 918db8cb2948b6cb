"""The bottleneck teacher task of the Leaky ResNet paper (Jacot & Kaiser 2024, docs/theory.md §6).

x ~ N(0, I_{d_in}); y = h(g(x)) with g: R^{d_in} → R^rank and h: R^rank → R^{d_out} random
one-hidden-layer ReLU networks of width `hidden` (first-layer weights N(0, 1/fan_in), biases
N(0, bias_std²), second layer N(0, 1/hidden), no output bias; the inner code g(x) is
standardized per coordinate before h). x and y are standardized per coordinate with the
training set's mean and std; then Gaussian noise of std `noise` is added to y. y factors
through `rank` dimensions: bottleneck rank ≤ rank (``metadata["true_rank"]``); 30 → 3 → 30 by
default, the paper's.
"""

from __future__ import annotations

import torch

from bnrank.tasks.base import TaskData
from bnrank.tasks.composition import _random_relu_net, _standardize


def teacher_task(cfg) -> TaskData:
    """Generate the task a `TeacherTask` config describes (deterministic in cfg.seed)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    g = _random_relu_net(gen, cfg.d_in, cfg.hidden, cfg.rank, cfg.bias_std)
    h = _random_relu_net(gen, cfg.rank, cfg.hidden, cfg.d_out, cfg.bias_std)
    n = cfg.n_train + cfg.n_test
    x = torch.randn(n, cfg.d_in, generator=gen, dtype=torch.float64)
    code = g(x)
    code = (code - code[: cfg.n_train].mean(0)) / code[: cfg.n_train].std(0).clamp_min(1e-12)
    y = h(code)
    x_train, x_test = _standardize(x[: cfg.n_train], x[cfg.n_train :])
    y_train, y_test = _standardize(y[: cfg.n_train], y[cfg.n_train :])
    if cfg.noise > 0:
        y_train = y_train + cfg.noise * torch.randn(y_train.shape, generator=gen, dtype=torch.float64)
        y_test = y_test + cfg.noise * torch.randn(y_test.shape, generator=gen, dtype=torch.float64)
    return TaskData(x_train, y_train, x_test, y_test, {"kind": "teacher", "true_rank": cfg.rank})
