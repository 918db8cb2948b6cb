"""TaskData: the tensors of a task plus what is known about it, and `make_task(config)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bnrank.errors import DataError


@dataclass(frozen=True)
class TaskData:
    """Train and test sets, float64: x (N, d_in), y (N, d_out); `metadata` holds known facts
    (``true_rank`` = the target's bottleneck rank, when known)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_xy(self.x_train, self.y_train, "train")
        if self.x_test.shape[0]:
            check_xy(self.x_test, self.y_test, "test")

    @property
    def d_in(self) -> int:
        return self.x_train.shape[1]

    @property
    def d_out(self) -> int:
        return self.y_train.shape[1]


def check_xy(x: Tensor, y: Tensor, name: str = "data") -> None:
    """Raise DataError unless x (N, d_in) and y (N, d_out) are finite 2-d tensors of equal N."""
    if x.dim() != 2 or y.dim() != 2:
        raise DataError(f"{name}: x and y must be 2-d (N, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise DataError(f"{name}: no samples")
    for label, t in (("x", x), ("y", y)):
        if not torch.isfinite(t).all():
            raise DataError(f"{name}: {label} contains NaN or inf")


def make_task(cfg) -> TaskData:
    """Build the task a validated task config describes."""
    from bnrank.tasks.composition import composition_task
    from bnrank.tasks.file import file_task
    from bnrank.tasks.matern import matern_composition_task
    from bnrank.tasks.symmetry import symmetry_task
    from bnrank.tasks.teacher import teacher_task

    builders = {"composition": composition_task, "symmetry": symmetry_task, "matern-composition": matern_composition_task,
                "file": file_task, "teacher": teacher_task}
    return builders[cfg.kind](cfg)
