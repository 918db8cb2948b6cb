"""Optimizers batched over ensemble members, with a learning rate per member.

Every parameter has a leading member axis E. ``step(grads, lr, active)`` takes lr of shape (E,)
and a boolean mask `active` (E,): inactive (diverged) members are left exactly as they are. No
Python loop over members; one loop over parameter tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _per_member(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class GD:
    """(Stochastic) gradient descent with optional heavy-ball momentum: v ← μv + g, θ ← θ − lr·v."""

    def __init__(self, params: list[Tensor], momentum: float = 0.0):
        self.params = params
        self.momentum = momentum
        self.velocity = [torch.zeros_like(p) for p in params] if momentum else None

    def step(self, grads: list[Tensor], lr: Tensor, active: Tensor) -> None:
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(self.params, grads)):
                if self.velocity is not None:
                    g = self.velocity[i].mul_(self.momentum).add_(g)
                update = g * _per_member(lr, p)
                p.sub_(torch.where(_per_member(active, p), update, 0.0))


class Adam:
    """Adam (Kingma & Ba) with bias correction; the objective's penalty is in the gradient."""

    def __init__(self, params: list[Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = params
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[Tensor], lr: Tensor, active: Tensor) -> None:
        self.t += 1
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        with torch.no_grad():
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                g = torch.where(_per_member(active, p), g, 0.0)
                m.lerp_(g, 1 - self.beta1)
                v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
                denom = (v / c2).sqrt_().add_(self.eps)
                update = (m / denom).mul_(_per_member(lr / c1, p))
                p.sub_(torch.where(_per_member(active, p), update, 0.0))


def make_optimizer(phase, params: list[Tensor]):
    """The optimizer a `Phase` config names."""
    if phase.optimizer == "adam":
        return Adam(params, betas=tuple(phase.betas), eps=phase.eps)
    return GD(params, momentum=phase.momentum)
