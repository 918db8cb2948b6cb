"""Second-order finish: L-BFGS in float64, batched over the ensemble (Phase optimizer "lbfgs").

Heavy-ball GD needs ~10⁵ steps on this objective (top Hessian eigenvalue ~10³–10⁴, penalty
curvature 2λ ~ 10⁻³; bench/README.md); a quasi-Newton method builds the curvature of the slow
directions from its own gradients. Per member e, with the last `history` pairs
(s = θ_{k+1} − θ_k, y = g_{k+1} − g_k) of that member:

- direction d = −H g by the two-loop recursion, H₀ = γI with γ = sᵀy / yᵀy of the newest pair
  (the first step is −g/‖g‖, a unit step); a pair with sᵀy ≤ CURVATURE_EPS·‖s‖‖y‖ is not
  stored, and a direction that is not a descent direction restarts the member's memory.
- backtracking line search from α = 1 with the Armijo condition C(θ + αd) ≤ C(θ) + c₁α gᵀd
  (c₁ = ARMIJO_C1), halving α; a non-finite trial value counts as a failed one. Every trial is
  one batched forward/backward for all members (`bnrank.training.backprop`); members that accepted
  their step, or are frozen, keep their parameters while the others try again.
- a member stops with ``converged`` when its relative gradient ‖∇C‖ / (‖∇fit‖ + ‖2λθ‖) (the
  certificate's, bnrank.measure.certificate) is at most `gtol`, and is frozen with ``failed``
  when its line search finds no decrease in MAX_TRIALS trials (at float64 resolution of C, or a
  bad direction). Either way the other members are unaffected: every operation is per member
  (rows of (E, P) tensors, batched matmuls), so a member's iterates are those it would have alone.

With smoothing (ReLU MLPs), stage j of the homotopy evaluates C with every ReLU replaced by
s_δ(α) = 0 (α ≤ −δ), (α + δ)²/(4δ) (|α| < δ), α (α ≥ δ) at δ = δ_j: C¹, equal to ReLU off the band
|α| < δ, with slope (α + δ)/(2δ) ∈ [0, 1] inside it. Minima of regularized ReLU nets lie on kinks
(bnrank.measure.kinks), where L-BFGS on C itself stalls: it builds its curvature model from
gradients that jump. The smoothed objectives are differentiable, their minimizers move to C's as
δ → 0, and the slopes of the units inside the band are the kink slopes D* of the kink analysis.
Smoothed gradients are autograd's on one batched forward of all members.

Parameters are kept member-major in an (E, P) float64 buffer, in the order of
``model.parameters()``, and written into the model before each evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bnrank.config import MseReduction
from bnrank.training.backprop import Workspace
from bnrank.training.objective import mse_scale

ARMIJO_C1 = 1e-4
"""Sufficient-decrease constant of the line search."""
MAX_TRIALS = 40
"""Halvings of the step before a member's line search fails (α = 2⁻⁴⁰ ≈ 1e-12)."""
CURVATURE_EPS = 1e-12
"""A pair (s, y) is stored only when sᵀy > CURVATURE_EPS·‖s‖‖y‖ (keeps H positive definite)."""


def value_and_grads(model, x: Tensor, y: Tensor, lam: Tensor, workspace: Workspace, reduction: MseReduction):
    """(objective, mse, ‖θ‖², grads) of every member: the model family's exact gradient
    (the one place the finish evaluates the objective)."""
    return model.objective_and_grads(x, y, lam, workspace, reduction)


class LBFGS:
    """Batched L-BFGS from θ (E, P) float64 at per-member `lam` (E,), see the module docstring.

    `evaluate(θ)` returns (C (E,), ∇C (E, P)) for member-major parameters θ (E, P): one batched
    forward/backward. `frozen` (E,) bool: members that must not move (diverged or stopped)."""

    def __init__(self, evaluate: Callable[[Tensor], tuple[Tensor, Tensor]], theta: Tensor, lam: Tensor,
                 history: int, gtol: float, frozen: Tensor):
        self.evaluate = evaluate
        self.lam, self.gtol = lam, gtol
        self.theta = theta.clone()
        E, P = self.theta.shape
        dt, dev = self.theta.dtype, self.theta.device
        self.S = torch.zeros(history, E, P, dtype=dt, device=dev)
        self.Y = torch.zeros_like(self.S)
        self.rho = torch.zeros(history, E, dtype=dt, device=dev)  # 0: empty slot
        self.head = 0  # slot of the next pair (a ring buffer shared by the members)
        self.gamma = torch.zeros(E, dtype=dt, device=dev)  # 0: no pair yet
        self.frozen = frozen.clone()
        self.converged = torch.zeros(E, dtype=torch.bool, device=dev)
        self.failed = torch.zeros(E, dtype=torch.bool, device=dev)
        self.step = torch.zeros(E, dtype=dt, device=dev)
        self.f, self.g = evaluate(self.theta)
        self.failed |= ~torch.isfinite(self.f) & ~self.frozen
        self._check_converged()

    def rel_grad(self) -> Tensor:
        """‖∇C‖ / (‖∇fit‖ + ‖2λθ‖) per member (E,)."""
        pen = self.theta * (2 * self.lam)[:, None]
        den = (self.g - pen).norm(dim=1) + pen.norm(dim=1)
        return self.g.norm(dim=1) / den.clamp_min(1e-300)

    def _check_converged(self) -> None:
        live = self.live()
        self.converged |= live & (self.rel_grad() <= self.gtol)

    def live(self) -> Tensor:
        return ~(self.frozen | self.converged | self.failed)

    # -- one iteration --------------------------------------------------------------------------

    def _direction(self) -> Tensor:
        """−H g by the two-loop recursion, per member (E, P)."""
        m = self.S.shape[0]
        q = self.g.clone()
        order = [(self.head - 1 - i) % m for i in range(m)]  # newest first
        alpha = {}
        for i in order:
            a = self.rho[i] * (self.S[i] * q).sum(1)
            q -= a[:, None] * self.Y[i]
            alpha[i] = a
        first = self.gamma == 0
        gamma = torch.where(first, 1.0 / self.g.norm(dim=1).clamp_min(1e-300), self.gamma)
        r = q * gamma[:, None]
        for i in reversed(order):
            b = self.rho[i] * (self.Y[i] * r).sum(1)
            r += (alpha[i] - b)[:, None] * self.S[i]
        return -r

    def _forget(self, members: Tensor) -> None:
        self.rho[:, members] = 0.0
        self.gamma[members] = 0.0

    def iterate(self) -> Tensor:
        """One L-BFGS iteration of every live member; returns the accepted step α per member."""
        live = self.live()
        d = self._direction()
        slope = (d * self.g).sum(1)
        bad = live & ~(slope < 0)
        if bad.any():  # not a descent direction: restart these members' memory
            self._forget(bad)
            d = torch.where(bad[:, None], self._direction(), d)
            slope = (d * self.g).sum(1)
        alpha = torch.where(live, torch.ones_like(self.f), torch.zeros_like(self.f))
        searching = live.clone()
        new = (self.theta.clone(), self.f.clone(), self.g.clone())
        for _ in range(MAX_TRIALS):
            trial = torch.where(searching[:, None], self.theta + alpha[:, None] * d, new[0])
            f, g = self.evaluate(trial)
            ok = searching & torch.isfinite(f) & (f <= self.f + ARMIJO_C1 * alpha * slope)
            sel = ok[:, None]
            new = (torch.where(sel, trial, new[0]), torch.where(ok, f, new[1]), torch.where(sel, g, new[2]))
            searching &= ~ok
            if not searching.any():
                break
            alpha = torch.where(searching, alpha * 0.5, alpha)
        self.failed |= searching
        accepted = live & ~searching
        s, yv = new[0] - self.theta, new[2] - self.g
        sy = (s * yv).sum(1)
        store = accepted & (sy > CURVATURE_EPS * s.norm(dim=1) * yv.norm(dim=1))
        slot = self.head
        self.S[slot] = torch.where(store[:, None], s, 0.0)
        self.Y[slot] = torch.where(store[:, None], yv, 0.0)
        self.rho[slot] = torch.where(store, 1.0 / torch.where(store, sy, 1.0), 0.0)
        self.gamma = torch.where(store, sy / (yv * yv).sum(1).clamp_min(1e-300), self.gamma)
        self.head = (slot + 1) % self.S.shape[0]
        self.theta, self.f, self.g = new
        self.step = torch.where(accepted, alpha, 0.0)
        self._check_converged()
        return self.step


class ModelObjective:
    """`evaluate` for LBFGS on an ensemble `model` (its parameters are overwritten by every call):
    the flat member-major θ (E, P) in the order of ``model.parameters()``, the model family's
    exact gradient by one batched forward/backward (`value_and_grads`). `mse` and `norm_sq` hold
    the last call's values."""

    def __init__(self, model, x: Tensor, y: Tensor, lam: Tensor, reduction: MseReduction):
        self.model, self.x, self.y, self.lam, self.reduction = model, x, y, lam, reduction
        self.params = list(model.parameters())
        self.sizes = [p[0].numel() for p in self.params]
        self.ws = Workspace()
        self.mse = self.norm_sq = None
        self.delta = 0.0
        """Smoothing half-width δ of the evaluations (0: the objective itself; > 0: ReLU MLPs)."""

    def theta(self) -> Tensor:
        E = self.model.members
        return torch.cat([p.detach().reshape(E, -1) for p in self.params], 1).clone()

    def load(self, theta: Tensor) -> None:
        with torch.no_grad():
            for p, part in zip(self.params, torch.split(theta, self.sizes, 1)):
                p.copy_(part.view_as(p))

    def __call__(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        if self.delta > 0:
            return self._smoothed(theta)
        self.load(theta)
        obj, err, norm, grads = value_and_grads(self.model, self.x, self.y, self.lam, self.ws, self.reduction)
        self.mse, self.norm_sq = err.clone(), norm.clone()
        E = theta.shape[0]
        return obj.clone(), torch.cat([t.reshape(E, -1) for t in grads], 1)  # copies out of the workspace

    def _smoothed(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(C_δ (E,), ∇C_δ (E, P)): the objective with s_δ for ReLU (module docstring)."""
        depth = self.model.depth
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            parts = [u.view_as(p) for u, p in zip(torch.split(t, self.sizes, 1), self.params)]
            weights, biases = parts[:depth], (parts[depth:] if self.model.has_bias else [None] * depth)
            h = self.x
            for i, (w, b) in enumerate(zip(weights, biases)):
                if i > 0:
                    h = smooth_relu(h, self.delta)
                h = torch.matmul(h, w.transpose(1, 2))
                h = h if b is None else h + b.unsqueeze(1)
            err = (h - self.y).square().sum(-1).mean(-1) * mse_scale(self.reduction, h.shape[-1])
            norm = t.square().sum(1)
            obj = err + self.lam * norm
            (grad,) = torch.autograd.grad(obj.sum(), t)
        self.mse, self.norm_sq = err.detach(), norm.detach()
        return obj.detach(), grad


def smooth_relu(h: Tensor, delta: float) -> Tensor:
    """s_δ(h): 0 below −δ, (h + δ)²/(4δ) on |h| < δ, h above δ (C¹; the module docstring)."""
    band = (h + delta).square() / (4 * delta)
    return torch.where(h >= delta, h, torch.where(h <= -delta, torch.zeros_like(h), band))
