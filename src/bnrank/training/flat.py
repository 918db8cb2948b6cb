"""All parameters of an ensemble in one buffer, so the optimizer is a few whole-buffer ops.

A step of a small network is bound by the number of tensor operations, not by arithmetic
(bench/README.md): an optimizer looping over 2L parameter tensors issues ~10 ops per tensor.
`FlatParameters` moves the parameters into one 1-D buffer ``data``: every parameter of the
model becomes a view of one contiguous block of it (W_1..W_L, then b_1..b_L, the order of
``model.parameters()``; each block is the whole (E, ...) tensor, so every parameter keeps
exactly the memory layout it had and a member's arithmetic does not depend on its ensemble).
``grad`` has the same layout and its views ``grads`` receive the backward pass
(the family's ``objective_and_grads(..., flat=...)``); ``member`` gives the member of
every element, so per-member values (a learning rate, an active mask) spread over the buffer
with one gather (`per_element`, cached: a whole-buffer gather costs several elementwise passes).

Used as a context manager by `bnrank.training.fit`: on exit every parameter gets its own storage
back, so the model is as it would be without it.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FlatParameters:
    """`model`'s parameters as views of one buffer `data` (E·P,); `grad` likewise with views `grads`."""

    def __init__(self, model):
        self.params = list(model.parameters())
        ref, members = self.params[0], model.members
        sizes = [p.numel() for p in self.params]
        self.data = ref.new_empty(sum(sizes))
        self.grad = ref.new_zeros(sum(sizes))
        self.grads: list[Tensor] = []
        offset = 0
        for p, size in zip(self.params, sizes):
            view = self.data[offset : offset + size].view(p.shape)
            view.copy_(p.detach())
            p.data = view
            self.grads.append(self.grad[offset : offset + size].view(p.shape))
            offset += size
        index = torch.arange(members, device=ref.device)
        self.member = torch.cat([index.repeat_interleave(size // members) for size in sizes])
        self._spread: dict[str, tuple[Tensor, Tensor]] = {}

    def per_element(self, values: Tensor, key: str | None = None) -> Tensor:
        """(E·P,) tensor holding values[e] (values: (E,)) at every element of member e.

        With a `key`, the result lives in one buffer that every call with that key returns: on
        the CPU it is gathered anew only when `values` differ from the last call's (a whole-buffer
        gather costs several elementwise passes), on a GPU on every call (one kernel, where the
        comparison would wait for the device; so the gather can be part of a CUDA graph)."""
        if key is None:
            return values.index_select(0, self.member)
        last = self._spread.get(key)
        if last is None:
            self._spread[key] = (values.clone(), values.index_select(0, self.member))
        elif values.device.type != "cpu" or not torch.equal(last[0], values):
            torch.index_select(values, 0, self.member, out=last[1])
            last[0].copy_(values)
        return self._spread[key][1]

    def store_grads(self, grads) -> list[Tensor]:
        """Copy per-parameter gradients into ``grads`` (the views of ``grad``) and return those views."""
        for out, g in zip(self.grads, grads):
            out.copy_(g)
        return list(self.grads)

    def __enter__(self) -> "FlatParameters":
        return self

    def __exit__(self, *exc) -> None:
        for p in self.params:
            p.data = p.data.clone()
