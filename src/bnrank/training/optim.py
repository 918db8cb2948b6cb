"""Optimizers batched over ensemble members, with a learning rate per member.

They update one parameter buffer (`bnrank.training.flat.FlatParameters`) from a gradient buffer of
the same layout, in a few whole-buffer ops and no Python loop over members or parameter tensors.
``step(grad, lr, active, scale)`` takes the learning rate and a boolean mask `active` per
element (`FlatParameters.per_element` of per-member values) and a scalar factor on lr (the
schedule's): inactive (diverged or stopped) members are left exactly as they are (their
optimizer state is not kept meaningful: they never become active again). A step is
``prepare(scale)`` (host side: the step's scalars into small device buffers) then
``apply(grad, lr, active)`` (device ops only, reading those buffers), so `apply` can be captured
once as a CUDA graph and replayed (`bnrank.training.step`).

An update runs its ops chunk by chunk (CHUNK elements), so each chunk's several passes stay in
the CPU cache rather than streaming a multi-MB buffer once per pass (1.7M floats for 16 depth-12
width-100 nets); measured, its effect was within this VM's noise (bench/README.md). On a GPU an
update is one chunk: there every op is a kernel launch, and caches are not what chunks buy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CHUNK = 1 << 16
"""Elements per chunk of an update: 256 KiB of float32 per operand."""


def _chunks(param: Tensor) -> list[slice]:
    n = param.numel()
    if param.device.type != "cpu":
        return [slice(0, n)]
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


class _Optimizer:
    """A step is `prepare` (host) then `apply` (device ops only); see the module docstring."""

    def step(self, grad: Tensor, lr: Tensor, active: Tensor, scale: float = 1.0) -> None:
        self.prepare(scale)
        self.apply(grad, lr, active)


class GD(_Optimizer):
    """(Stochastic) gradient descent with optional heavy-ball momentum: v ← μv + g, θ ← θ − lr·v."""

    def __init__(self, param: Tensor, momentum: float = 0.0):
        self.param = param
        self.momentum = momentum
        self.velocity = torch.zeros_like(param) if momentum else None
        self.update = torch.empty_like(param)
        self.chunks = _chunks(param)
        self.coef = param.new_zeros(())  # this step's factor on lr (`prepare`)

    def prepare(self, scale: float = 1.0) -> None:
        self.coef.fill_(scale)

    def apply(self, grad: Tensor, lr: Tensor, active: Tensor) -> None:
        with torch.no_grad():
            for c in self.chunks:
                g = grad[c] if self.velocity is None else self.velocity[c].mul_(self.momentum).add_(grad[c])
                update = torch.mul(g, lr[c], out=self.update[c]).masked_fill_(~active[c], 0.0)
                self.param[c].addcmul_(update, self.coef, value=-1)


class Adam(_Optimizer):
    """Adam (Kingma & Ba) with bias correction; the objective's penalty is in the gradient."""

    def __init__(self, param: Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param = param
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.update = torch.empty_like(param)
        self.chunks = _chunks(param)
        self.coef = param.new_zeros(())  # this step's scale / c1 (`prepare`)
        self.root_c2 = param.new_zeros(())  # and √c2 (bias corrections c_i = 1 − β_i^t)

    def prepare(self, scale: float = 1.0) -> None:
        self.t += 1
        self.coef.fill_(scale / (1 - self.beta1**self.t))
        self.root_c2.fill_(math.sqrt(1 - self.beta2**self.t))

    def apply(self, grad: Tensor, lr: Tensor, active: Tensor) -> None:
        with torch.no_grad():
            for c in self.chunks:
                g, m, v, buf = grad[c], self.m[c], self.v[c], self.update[c]
                m.lerp_(g, 1 - self.beta1)
                v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
                denom = torch.sqrt(v, out=buf).div_(self.root_c2).add_(self.eps)  # √(v/c2) + eps
                update = torch.div(m, denom, out=buf).mul_(lr[c]).masked_fill_(~active[c], 0.0)
                self.param[c].addcmul_(update, self.coef, value=-1)


def make_optimizer(phase, param: Tensor):
    """The optimizer a `Phase` config names, for the parameter buffer `param`."""
    if phase.optimizer == "adam":
        return Adam(param, betas=tuple(phase.betas), eps=phase.eps)
    return GD(param, momentum=phase.momentum)
