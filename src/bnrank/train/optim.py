"""Optimizers batched over ensemble members, with a learning rate per member.

They update one parameter buffer (`bnrank.train.flat.FlatParameters`) from a gradient buffer of
the same layout, in a few whole-buffer ops and no Python loop over members or parameter tensors.
``step(grad, lr, active)`` takes the learning rate and a boolean mask `active` per element
(`FlatParameters.per_element` of per-member values): inactive (diverged or stopped) members are
left exactly as they are (their optimizer state is not kept meaningful: they never become
active again).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GD:
    """(Stochastic) gradient descent with optional heavy-ball momentum: v ← μv + g, θ ← θ − lr·v."""

    def __init__(self, param: Tensor, momentum: float = 0.0):
        self.param = param
        self.momentum = momentum
        self.velocity = torch.zeros_like(param) if momentum else None
        self.update = torch.empty_like(param)

    def step(self, grad: Tensor, lr: Tensor, active: Tensor) -> None:
        with torch.no_grad():
            if self.velocity is not None:
                grad = self.velocity.mul_(self.momentum).add_(grad)
            torch.mul(grad, lr, out=self.update)
            self.param.sub_(self.update.masked_fill_(~active, 0.0))


class Adam:
    """Adam (Kingma & Ba) with bias correction; the objective's penalty is in the gradient."""

    def __init__(self, param: Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param = param
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.update = torch.empty_like(param)

    def step(self, grad: Tensor, lr: Tensor, active: Tensor) -> None:
        self.t += 1
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        with torch.no_grad():
            self.m.lerp_(grad, 1 - self.beta1)
            self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = torch.sqrt(self.v, out=self.update).div_(math.sqrt(c2)).add_(self.eps)  # √(v/c2) + eps
            update = torch.div(self.m, denom, out=self.update).mul_(lr).div_(c1)
            self.param.sub_(update.masked_fill_(~active, 0.0))


def make_optimizer(phase, param: Tensor):
    """The optimizer a `Phase` config names, for the parameter buffer `param`."""
    if phase.optimizer == "adam":
        return Adam(param, betas=tuple(phase.betas), eps=phase.eps)
    return GD(param, momentum=phase.momentum)
