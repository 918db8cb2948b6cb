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
    (``true_rank`` = the target's bottleneck rank, when known). `mask` (N, d_out) bool, when
    given, marks the observed entries of y_train (a completion task): the others carry no
    information, and every row and column must hold an observed entry."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        check_xy(self.x_train, self.y_train, "train")
        if self.x_test.shape[0]:
            check_xy(self.x_test, self.y_test, "test")
        if self.mask is not None:
            check_mask(self.mask, self.y_train)

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


def check_mask(mask: Tensor, y: Tensor) -> None:
    """Raise DataError unless `mask` is a bool tensor of y's shape with an observed entry in
    every row and every column (the first empty one is named, counting from 0)."""
    if mask.dtype != torch.bool or mask.shape != y.shape:
        raise DataError(f"mask must be a bool tensor of the targets' shape {tuple(y.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    for axis, name in ((1, "row"), (0, "column")):
        empty = torch.nonzero(~mask.any(axis)).flatten()
        if empty.numel():
            raise DataError(
                f"mask: {name} {int(empty[0])} has no observed entry ({empty.numel()} empty {name}s; "
                "every row and column needs one: observe more entries or draw another seed)"
            )


def make_task(cfg) -> TaskData:
    """Build the task a validated task config describes."""
    from bnrank.tasks.completion import completion_task
    from bnrank.tasks.composition import composition_task
    from bnrank.tasks.file import file_task
    from bnrank.tasks.linear import linear_regression_task
    from bnrank.tasks.matern import matern_composition_task
    from bnrank.tasks.symmetry import symmetry_task
    from bnrank.tasks.teacher import teacher_task

    builders = {"composition": composition_task, "symmetry": symmetry_task, "matern-composition": matern_composition_task,
                "file": file_task, "teacher": teacher_task, "linear-regression": linear_regression_task, "matrix-completion": completion_task}
    return builders[cfg.kind](cfg)
