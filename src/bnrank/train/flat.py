"""All parameters of an ensemble in one (E, P) buffer, so the optimizer is a few whole-buffer ops.

A step of a small network is bound by the number of tensor operations, not by arithmetic
(bench/README.md): an optimizer looping over 2L parameter tensors issues ~10 ops per tensor.
`FlatParameters` moves the parameters into one member-major buffer ``data`` (E, P): every
parameter of the model becomes a view of it (W_1..W_L, then b_1..b_L, the order of
``model.parameters()``), and ``grad`` is a buffer of the same layout whose views ``grads``
receive the backward pass (`bnrank.train.backprop.objective_and_grads(..., flat=...)`). The
optimizer, the penalty's gradient, ‖θ‖² and the gradient norm are then one op each over (E, P).

Used as a context manager by `bnrank.train.fit`: on exit every parameter gets its own
contiguous storage back, so the model is as it would be without it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnrank.models import EnsembleMLP


class FlatParameters:
    """`model`'s parameters as views of one (E, P) buffer `data`; `grad` (E, P) with views `grads`."""

    def __init__(self, model: EnsembleMLP):
        self.params = list(model.parameters())
        ref = self.params[0]
        sizes = [p[0].numel() for p in self.params]
        self.data = ref.new_empty(model.members, sum(sizes))
        self.grad = ref.new_zeros(model.members, sum(sizes))
        self.grads: list[Tensor] = []
        offset = 0
        for p, size in zip(self.params, sizes):
            view = self.data[:, offset : offset + size].view(p.shape)
            view.copy_(p.detach())
            p.data = view
            self.grads.append(self.grad[:, offset : offset + size].view(p.shape))
            offset += size

    def __enter__(self) -> "FlatParameters":
        return self

    def __exit__(self, *exc) -> None:
        for p in self.params:
            p.data = p.data.clone(memory_format=torch.contiguous_format)
