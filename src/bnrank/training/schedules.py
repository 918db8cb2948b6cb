"""Learning-rate and λ schedules of a phase, as multiplicative factors of the step in the phase."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnrank.config import MseReduction, per_member


def lr_factor(phase, step: int) -> float:
    """Factor on the phase's peak lr at `step` (0-based): warm-up, then the schedule."""
    if step < phase.warmup_steps:
        return (step + 1) / phase.warmup_steps
    span = max(phase.steps - phase.warmup_steps, 1)
    s = (step - phase.warmup_steps) / span
    lo = phase.final_lr_factor
    if phase.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * s))
    if phase.schedule == "linear":
        return 1 - (1 - lo) * s
    return 1.0


def lam_factor(phase, step: int) -> float:
    """Factor on λ at `step`: geometric from lam_factor_start to 1 over lam_anneal_fraction."""
    if phase.lam_factor_start == 1.0:
        return 1.0
    span = phase.lam_anneal_fraction * phase.steps
    s = min(step / span, 1.0)
    return phase.lam_factor_start ** (1 - s)


# -- curvature-scaled steps (Phase.lr_sharpness, Phase.momentum = "auto") -----------------------

MOMENTUM_RANGE = (0.9, 0.9995)
"""Clip of the automatic momentum: below 0.9 heavy ball gains little, above 0.9995 a velocity
needs more than 2000 steps to forget a kink of the ReLU landscape."""


def top_hessian_eigenvalue(
    model, x: Tensor, y: Tensor, lam: Tensor, iters: int = 20, seed: int = 0, reduction: MseReduction = "sum"
) -> Tensor:
    """Top Hessian eigenvalue of each member's objective (1/N)Σ‖f − y‖² + λ‖θ‖²: (E,)
    (the squared error divided by d_out with `reduction` "mean").

    Power iteration on Hessian-vector products (autograd double backward), one batched product
    per iteration for all members: the objective is a sum over members, so its Hessian is block
    diagonal and each member's block is iterated with its own normalization. Returns ‖Hv‖ for
    the last unit iterate v: it approaches max |eigenvalue| from below, is never below the
    Rayleigh quotient |vᵀHv|, and is not fooled by large negative eigenvalues far from a
    minimum (where the Rayleigh quotient of a mixed-sign iterate can be small). A cheap
    step-size estimate, not a measurement (bnrank.measure.curvature has the Lanczos one).
    """
    from bnrank.training.objective import objective

    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    # one start vector of a member's shape, the same for every member: a member's estimate does
    # not depend on the ensemble it is trained in
    v = [torch.randn(p.shape[1:], generator=gen, dtype=torch.float64).to(p).expand_as(p) for p in params]

    def normalized(vs):
        norm = sum(t.square().flatten(1).sum(1) for t in vs).sqrt().clamp_min(1e-30)
        return [t / norm.view(-1, *[1] * (t.dim() - 1)) for t in vs]

    v = normalized(v)
    eig = torch.zeros(model.members, dtype=params[0].dtype, device=params[0].device)
    with torch.enable_grad():
        obj, _, _ = objective(model, x, y, lam, reduction)
        grads = torch.autograd.grad(obj.sum(), params, create_graph=True)
        for _ in range(iters):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            eig = sum(t.square().flatten(1).sum(1) for t in hv).sqrt()
            v = normalized([t.detach() for t in hv])
    return eig.detach()


def resolve_phase(phase, model, x: Tensor, y: Tensor, lam: Tensor, reduction: MseReduction = "sum"):
    """The phase with curvature-scaled settings made concrete at the current parameters.

    `lr_sharpness = c` → lr = c / h_max per member (h_max from `top_hessian_eigenvalue`, at the
    phase's starting λ; a member whose h_max is not finite and positive keeps `phase.lr`), so a
    member's lr does not depend on its ensemble; `momentum = "auto"` → μ = (1 − √(2λ·lr))² for the member with the
    smallest λ·lr, clipped to MOMENTUM_RANGE. A phase without either is returned unchanged.
    lam: (E,) target λ of every member; reduction: the objective's ("sum" or "mean").
    """
    if phase.lr_sharpness is None and phase.momentum != "auto":
        return phase
    update: dict = {}
    lr = torch.tensor(per_member(phase.lr, model.members), dtype=torch.float64)
    if phase.lr_sharpness is not None:
        lam_start = lam * lam_factor(phase, 0)
        h = top_hessian_eigenvalue(model, x, y, lam_start, iters=phase.sharpness_iters, reduction=reduction).double().cpu()
        h = torch.where(torch.isfinite(h) & (h > 0), h, torch.full_like(h, float("nan")))
        # a member whose curvature is unusable (non-finite or ≤ 0) keeps the phase's own lr
        lr = torch.where(torch.isfinite(h), phase.lr_sharpness / h, lr)
        update["lr"] = lr.tolist()
    if phase.momentum == "auto":
        lam_cpu = lam.detach().double().cpu()
        slow = 2 * lam_cpu * lr
        slow = slow[slow > 0]
        mu = (1 - slow.min().sqrt()).square().item() if len(slow) else MOMENTUM_RANGE[0]
        update["momentum"] = min(max(mu, MOMENTUM_RANGE[0]), MOMENTUM_RANGE[1])
    return phase.model_copy(update=update)
