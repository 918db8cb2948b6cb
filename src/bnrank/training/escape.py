"""Leaving saddles: a step along a saddle certificate's direction, then the finish again.

A finish (bnrank.training.finish) stops where the objective's (smoothed) gradient vanishes; on a
regularized ReLU net that can be a saddle, which the certificate (bnrank.measure.certificate)
detects with a direction v (unit, (P,)) along which C falls: at first order off a concave kink,
at second order along negative curvature on the face tangent to the kinks or when a collapsed
neuron is switched on. `escape_step` moves a member along that line:

- the trial steps are t = ±‖θ‖·2⁻ʲ, j = 1 … LINE_POINTS (both signs: a curvature direction
  descends either way, the others usually one way), all evaluated at once (torch.func.vmap of
  the member's objective, float64);
- the step of the lowest C(θ + t·v) is taken when it lowers C by more than ESCAPE_REL_TOL·|C(θ)|
  (below that the fall is rounding or a higher-order term the finish undoes); otherwise the
  member stays where it is.

The trainer's finish (Phase ``escapes``) alternates: certify the finished members, step every
saddle along its direction, finish the stepped members again (the others frozen, so their
parameters stay bit-identical), for at most ``escapes`` rounds or until no member is a saddle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bnrank.config import MseReduction
from bnrank.measure.certificate import certify_with_directions, member_objective

LINE_POINTS = 30
"""Trial step lengths per sign: ‖θ‖·2⁻¹ down to ‖θ‖·2⁻³⁰."""
ESCAPE_REL_TOL = 1e-12
"""Smallest relative fall of C that counts as leaving the saddle."""


def escape_step(objective: Callable[[Tensor], Tensor], theta: Tensor, direction: Tensor) -> tuple[Tensor, float, float]:
    """(θ', C(θ), C(θ')) from a flat float64 θ (P,) along the unit `direction` (P,): θ' = θ + t·v
    at the best trial t, or θ itself when no trial lowers C enough (module docstring). `objective`
    maps a flat (P,) float64 θ to C (it must be vmap-able: a pure function of θ)."""
    theta = theta.to(torch.float64)
    direction = direction.to(theta)
    lengths = theta.norm().clamp_min(1.0) * 2.0 ** -torch.arange(1, LINE_POINTS + 1, dtype=theta.dtype)
    steps = torch.cat([lengths, -lengths])
    with torch.no_grad():
        here = float(objective(theta))
        values = torch.func.vmap(objective)(theta + steps[:, None] * direction)
    values = torch.where(torch.isfinite(values), values, torch.full_like(values, float("inf")))
    best = int(torch.argmin(values))
    there = float(values[best])
    if not there < here - ESCAPE_REL_TOL * abs(here):
        return theta, here, here
    return theta + steps[best] * direction, here, there


def leave_saddles(model, x: Tensor, y: Tensor, lam: Tensor, reduction: MseReduction, theta: Tensor,
                  members: Tensor, kink_tol: float) -> Tensor:
    """Certify `members` (E,) bool of `model` (loaded with θ; kinks within `kink_tol`,
    bnrank.measure.certificate.certify) and step each saddle along its
    direction (`escape_step`), writing the new parameters into the rows of θ (E, P) float64
    (member-major, in the order of ``model.parameters()``); x (N, d_in) or (E, N, d_in), y
    likewise, lam (E,). Returns which members moved (E,) bool."""
    chosen = torch.nonzero(members).flatten().tolist()
    moved = torch.zeros_like(members)
    pairs = certify_with_directions(model, x, y, lam.tolist(), reduction, kink_tol=kink_tol, members=chosen)
    for e, (_, direction) in zip(chosen, pairs):
        if direction is None:
            continue
        xe, ye = (x[e] if x.dim() == 3 else x), (y[e] if y.dim() == 3 else y)
        objective, _ = member_objective(model.select([e]).double(), xe.double(), ye.double(), float(lam[e]), reduction)
        new, before, after = escape_step(objective, theta[e], direction)
        if after < before:
            theta[e] = new.to(theta)
            moved[e] = True
    return moved
