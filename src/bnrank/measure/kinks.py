"""ReLU kinks: the smallest chain-rule subgradient, and the tangent space of a minimum on kinks.

A ReLU net's objective C(θ) = fit(θ) + λ‖θ‖² is not differentiable where a pre-activation
α_k = α_{ℓ,i}(x_n) is 0 (a *kink* k = (ℓ, n, i)). Minima of regularized ReLU nets lie on
many kinks (bench/README.md, "Certified minima"): a neuron that would hurt the fit on input x_n
when active is held exactly at its threshold there by the penalty, so the gradient PyTorch
returns (ReLU'(0) = 0, one side of each kink) does not vanish at the minimum.

Write F_D for C with, at each kink k, the unit's activation on that input replaced by the line
α ↦ D_k·α (D ∈ [0, 1]^K; a kink's unit keeps ReLU on every other input). F_D = C wherever every
kinked α_k is 0, and its gradient g(D) = ∇F_D(θ) is the chain rule with slope D_k at kink k.

- Stationarity: D* minimizes ‖g(D)‖ over the box (L-BFGS-B on ½‖g(D)‖², g exact: multilinear in
  D). Clarke's chain rule puts every Clarke subgradient of C in the convex hull of the g(D), so a
  large ‖g(D*)‖ proves θ is not a critical point; a small one is the witness that it is one.
- Each kink's upstream derivative c_k = ∂F_{D*}/∂σ(α_k). Moving θ along v changes C at first
  order by Σ_k (D_v,k − D*_k)·c_k·(∇α_k·v) beyond g(D*)·v, with D_v,k = 1 if ∇α_k·v > 0 else 0:
  - a *sharp* kink (c_k > C_TOL_REL·max|c|, SLOPE_MARGIN < D*_k < 1 − SLOPE_MARGIN) raises C
    at first order on both of its sides;
  - a *concave* kink (c_k < −C_TOL_REL·max|c|) lowers C at first order on one side: θ is not a
    minimum (when ∇α_k is not in the span of the other kinks' normals, whose terms could cancel);
  - a *one-sided* kink (c_k > C_TOL_REL·max|c|, D*_k within SLOPE_MARGIN of 0 or 1) raises C at
    first order on one side (∇α_k·v > 0 for D*_k ≈ 0, < 0 for D*_k ≈ 1) and is flat on the other;
  - any other kink (|c_k| at most the tolerance) is flat at first order on both sides.
- Tangent space T = {v : ∇α_k·v = 0 for every sharp kink}. Along T, C = F_{D*} to second order and
  ∇F_{D*} = g(D*) ≈ 0, so θ is a local minimum when moreover the Hessian of F_{D*} has no
  negative eigenvalue on T (`projector` gives P, the orthogonal projection onto T). The other
  kinks' normals stay inside the tested space, which is then stronger than needed.
- Face T' = {v ∈ T : ∇α_k·v = 0 for every one-sided kink too} (`projector(face=True)`). Along a
  curve that keeps every sharp and one-sided kink at α_k = 0 (it exists when their normals are
  independent), C = F_{D*} up to the flat kinks' terms, so a negative eigenvalue of the Hessian of
  F_{D*} on T' proves a direction of descent. A negative eigenvalue on T alone does not: its
  vector can cross one-sided kinks on their rising sides, which cost C at first order.

- Collapsed neurons (weights and bias 0, at the kink on every input) are not kinks: C is flat to
  first order along them, and switching one on changes C at second order. In hidden layer ℓ, with
  Z (N, d_{ℓ-1}[+1]) the layer's inputs (and 1 for the bias) and G (N, d_{ℓ+1}) = ∂fit/∂α_{ℓ+1},
  giving a collapsed neuron incoming u·a and outgoing w·b (‖u‖ = ‖w‖ = 1) changes C by
  ε²a²(2λ − S) + O(ε³) at a = b, with S(u) = ‖Gᵀ relu(Zu)‖. `escape_gain` is the largest S found
  (ESCAPE_STARTS starts of alternating maximization: the activation pattern, then the top
  singular vector of that pattern's G_Aᵀ Z_A); S > 2λ is a direction of descent (a saddle), and
  a gain ≤ 2λ means none was found, not that none exists.

All of it is computed in float64 for one member of a ReLU EnsembleMLP (with or without biases),
parameters flattened in the order of ``model.parameters()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

KINK_TOL = 1e-9
"""A pre-activation within KINK_TOL · (its layer's largest |pre-activation|) of 0 is on a kink. A
larger tolerance treats near-kinks as kinks: the witness is then one for a point within about
that distance of θ (a point a smoothed finish, bnrank.training.finish, leaves within its last
width δ of the kinks)."""
SLOPE_MARGIN = 1e-3
"""A kink's slope D*_k is interior when it is at least this far from 0 and from 1."""
C_TOL_REL = 1e-6
"""|c_k| below this fraction of the largest |c| over the kinks counts as 0 (neither sharp nor concave)."""
SUBGRADIENT_ITERS = 5000
"""L-BFGS-B iterations for the smallest subgradient."""
ESCAPE_STARTS = 64
"""Random starts of the collapsed-neuron escape search (per layer with collapsed neurons)."""
ESCAPE_ITERS = 50
"""Alternating-maximization iterations per start."""
MAX_TANGENT_ENTRIES = 2e8
"""Largest (# sharp kinks) × P the tangent projection is built for (a dense float64 matrix)."""


def kink_masks(model, x: Tensor, tol: float = KINK_TOL) -> tuple[list[Tensor], list[Tensor]]:
    """(kinks, collapsed) per hidden layer of every member: kinks bool (E, N, d_ℓ), |α| ≤
    tol · the layer's largest |α|, not counting collapsed neurons, bool (E, d_ℓ): those at
    the kink on every input (weights and bias ≈ 0). Empty lists for a linear net."""
    if getattr(model, "activation", "relu") != "relu":
        return [], []
    with torch.no_grad():
        masks, collapsed = [], []
        for alpha in (site.pre for site in model.sites(x) if site.nonlinear):
            a = alpha.abs()
            at = a <= tol * a.flatten(1).max(1).values[:, None, None]
            dead = at.all(1)
            masks.append(at & ~dead[:, None, :])
            collapsed.append(dead)
        return masks, collapsed


def escape_gain(z: Tensor, g: Tensor, seed: int = 0) -> tuple[float, Tensor]:
    """(S, u): the largest S(u) = ‖Gᵀ relu(Zu)‖ over unit u found from ESCAPE_STARTS starts, and
    that u (m,) (module docstring): z (N, m) the inputs of a layer, g (N, d) the fit gradient at
    the next pre-activation."""
    u = torch.randn(ESCAPE_STARTS, z.shape[1], generator=torch.Generator().manual_seed(seed), dtype=z.dtype)
    u = u / u.norm(dim=1, keepdim=True)

    def gain(v: Tensor) -> Tensor:  # S of each row of v
        return torch.linalg.vector_norm(torch.relu(v @ z.T) @ g, dim=1)

    scores = gain(u)
    best, best_u = scores.max(), u[scores.argmax()]
    for _ in range(ESCAPE_ITERS):
        active = (u @ z.T > 0).to(z.dtype)  # (S, N): the pattern of each start
        pattern = torch.einsum("sn,nd,nm->sdm", active, g, z)  # G_Aᵀ Z_A per start
        v = torch.linalg.svd(pattern, full_matrices=False).Vh[:, 0]
        u = torch.where((gain(v) >= gain(-v))[:, None], v, -v)
        scores = gain(u)
        if scores.max() > best:
            best, best_u = scores.max(), u[scores.argmax()]
    return best.item(), best_u


@dataclass
class KinkAnalysis:
    """What `analyze_kinks` finds for one member (see the module docstring).

    kinks, sharp, one_sided, concave, collapsed: counts; slopes: D* (K,); upstream: c (K,); rel_subgrad:
    ‖g(D*)‖ / (‖g(D*) − 2λθ‖ + ‖2λθ‖) (the certificate's relative gradient, at D*); escape_ratio:
    the largest collapsed-neuron escape gain found over the layers, divided by 2λ (0 without
    collapsed neurons; > 1: a descent direction); objective: F_{D*} as a function of a flat
    float64 θ (P,) (the penalty included); normals: (# sharp kinks, P) rows ∇α_k of the sharp
    kinks at θ and face_normals: (# one-sided kinks, P) those of the one-sided kinks (both None
    when the two together exceed MAX_TANGENT_ENTRIES); escape_direction: the unit θ-direction (P,)
    that switches on the collapsed neuron of the largest gain (incoming u, outgoing
    −Gᵀ relu(Zu)/S, both of norm 1/√2: C(θ + tv) = C(θ) + t²(2λ − S)/2 + O(t³)), None without
    collapsed neurons; concave_normal: ∇α_k (P,) of the most concave kink, None without one."""

    kinks: int
    sharp: int
    one_sided: int
    concave: int
    collapsed: int
    slopes: Tensor
    upstream: Tensor
    rel_subgrad: float
    escape_ratio: float
    objective: object
    normals: Tensor | None
    face_normals: Tensor | None
    escape_direction: Tensor | None
    concave_normal: Tensor | None

    def projector(self, face: bool = False) -> tuple[object, int] | None:
        """(v ↦ Pv on flat float64 θ-vectors (P,), dim T), or None when the normals were too large
        to build (MAX_TANGENT_ENTRIES). P = I − QᵀQ, Q an orthonormal basis of the normals' span
        (singular values above 1e-10 of the largest): of the sharp kinks for T, of the sharp and
        one-sided kinks for the face T' (`face`)."""
        if self.normals is None:
            return None
        normals = torch.cat([self.normals, self.face_normals]) if face else self.normals
        rows, p = normals.shape
        if rows == 0:
            return (lambda v: v), p
        _, s, vh = torch.linalg.svd(normals, full_matrices=False)
        q = vh[s > 1e-10 * s[0]]
        return (lambda v: v - q.T @ (q @ v)), p - q.shape[0]


class _Kinked:
    """F_D of one member: weights/biases split from a flat θ, ReLU except at the kinks."""

    def __init__(self, model, x: Tensor, y: Tensor, lam: float, scale: float, masks: list[Tensor]):
        params = [p.detach()[0].to(torch.float64) for p in model.parameters()]
        self.shapes, self.sizes = [p.shape for p in params], [p.numel() for p in params]
        self.theta = torch.cat([p.reshape(-1) for p in params])
        self.depth, self.bias = model.depth, model.has_bias
        self.x, self.y, self.lam, self.scale = x, y, lam, scale
        self.masks = masks  # per hidden layer, (N, d_ℓ) bool
        self.counts = [int(m.sum()) for m in masks]

    def _split(self, theta: Tensor):
        parts = [t.view(s) for t, s in zip(torch.split(theta, self.sizes), self.shapes)]
        return parts[: self.depth], (parts[self.depth:] if self.bias else [None] * self.depth)

    def layers(self, theta: Tensor, slopes: Tensor, probes: list[Tensor] | None = None):
        """(output (N, d_out), kinked pre-activations (K,), inputs of every layer [(N, d_{ℓ-1})])
        of F_D at θ; `probes` (one zero (N, d_ℓ) tensor per layer) are added to the
        pre-activations, for derivatives of the fit with respect to them."""
        weights, biases = self._split(theta)
        per_layer = torch.split(slopes, self.counts)
        h, kinked, inputs = self.x, [], []
        for i, (w, b) in enumerate(zip(weights, biases)):
            if i > 0:
                mask = self.masks[i - 1]
                kinked.append(h[mask])
                line = torch.zeros_like(h).masked_scatter(mask, per_layer[i - 1]) * h
                h = torch.where(mask, line, torch.relu(h))
            inputs.append(h)
            h = h @ w.T if b is None else h @ w.T + b
            if probes is not None:
                h = h + probes[i]
        return h, (torch.cat(kinked) if kinked else h.new_zeros(0)), inputs

    def switch_on(self, layer: int, neuron: int, u: Tensor, pull: Tensor) -> Tensor:
        """The unit θ-direction (P,) giving collapsed neuron `neuron` of hidden layer `layer` the
        incoming weights (and bias) u (d_{ℓ-1}[+1],) and the outgoing weights −pull/‖pull‖
        (d_{ℓ+1},), each part of norm 1/√2."""
        parts = [torch.zeros(s, dtype=torch.float64) for s in self.shapes]
        d_in = self.shapes[layer - 1][1]
        parts[layer - 1][neuron] = u[:d_in]
        if self.bias:
            parts[self.depth + layer - 1][neuron] = u[d_in]
        parts[layer][:, neuron] = -pull / pull.norm().clamp_min(1e-300)
        return torch.cat([p.reshape(-1) for p in parts]) / math.sqrt(2)

    def value(self, theta: Tensor, slopes: Tensor, probes: list[Tensor] | None = None) -> Tensor:
        out = self.layers(theta, slopes, probes)[0]
        return (out - self.y).square().sum(-1).mean() * self.scale + self.lam * theta.square().sum()


def _relative(g: Tensor, theta: Tensor, lam: float) -> float:
    penalty = 2 * lam * theta
    return g.norm().item() / max((g - penalty).norm().item() + penalty.norm().item(), 1e-300)


def analyze_kinks(model, x: Tensor, y: Tensor, lam: float, scale: float, masks: list[Tensor],
                  collapsed: list[Tensor]) -> KinkAnalysis:
    """The kink analysis (module docstring) of a one-member float64 ReLU MLP on (x (N, d_in), y),
    objective mean_n ‖f(x_n) − y_n‖²·scale + lam·‖θ‖²; `masks` (per hidden layer, (N, d_ℓ)) its
    kinks and `collapsed` (per hidden layer, (d_ℓ,)) its collapsed neurons (`kink_masks`)."""
    net = _Kinked(model, x, y, lam, scale, masks)
    theta = net.theta.clone().requires_grad_(True)
    with torch.no_grad():
        alpha = net.layers(net.theta, torch.zeros(sum(net.counts), dtype=torch.float64))[1]
    start = (alpha > 0).to(torch.float64)
    k = start.numel()

    def grad_at(slopes: Tensor, create_graph: bool = False) -> Tensor:
        (g,) = torch.autograd.grad(net.value(theta, slopes), theta, create_graph=create_graph)
        return g

    with torch.enable_grad():
        g0 = grad_at(start).detach()
        norm = max((g0 - 2 * lam * net.theta).norm().item() + (2 * lam * net.theta).norm().item(), 1e-300)

        def half_square(d: np.ndarray) -> tuple[float, np.ndarray]:
            slopes = torch.as_tensor(d, dtype=torch.float64).requires_grad_(True)
            g = grad_at(slopes, create_graph=True)
            phi = 0.5 * g.square().sum() / norm**2
            (dphi,) = torch.autograd.grad(phi, slopes)
            return phi.item(), dphi.numpy().astype(np.float64)

        if k:
            found = minimize(half_square, start.numpy(), jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * k,
                             options={"maxiter": SUBGRADIENT_ITERS, "ftol": 1e-30, "gtol": 1e-30, "maxcor": 30})
            slopes = torch.as_tensor(found.x, dtype=torch.float64)
        else:
            slopes = start
        g = grad_at(slopes).detach()
        weights = net._split(net.theta)[0]
        probes = [torch.zeros(x.shape[0], int(w.shape[0]), dtype=torch.float64, requires_grad=True) for w in weights]
        out, _, inputs = net.layers(net.theta, slopes, probes)
        fit = (out - y).square().sum(-1).mean() * scale
        pre_grads = torch.autograd.grad(fit, probes)
    upstream = torch.cat([(pg @ w)[m] for pg, w, m in zip(pre_grads[1:], weights[1:], masks)]) \
        if masks else torch.zeros(0, dtype=torch.float64)
    c_tol = C_TOL_REL * (upstream.abs().max().item() if k else 0.0)
    interior = (slopes > SLOPE_MARGIN) & (slopes < 1 - SLOPE_MARGIN)
    sharp = (upstream > c_tol) & interior
    one_sided = (upstream > c_tol) & ~interior
    concave = upstream < -c_tol
    best = (0.0, None)  # (gain, direction)
    for layer, dead in enumerate(collapsed, start=1):  # hidden layer ℓ: inputs[ℓ-1], gradient at α_{ℓ+1}
        if dead.any():
            z = inputs[layer - 1].detach()
            z = torch.cat([z, torch.ones_like(z[:, :1])], 1) if net.bias else z
            grad_next = pre_grads[layer].detach()
            gain, u = escape_gain(z, grad_next)
            if gain > best[0]:
                best = (gain, net.switch_on(layer, int(torch.nonzero(dead)[0]), u, grad_next.T @ torch.relu(z @ u)))
    binding = sharp | one_sided
    if int(binding.sum()) * net.theta.numel() > MAX_TANGENT_ENTRIES:
        normals = face_normals = None
    else:
        def kinked_alpha(t: Tensor) -> Tensor:
            return net.layers(t, slopes)[1][binding]

        rows = torch.func.jacrev(kinked_alpha, chunk_size=256)(net.theta) if binding.any() \
            else torch.zeros(0, net.theta.numel(), dtype=torch.float64)
        normals, face_normals = rows[sharp[binding]], rows[one_sided[binding]]
    concave_normal = None
    if concave.any():
        worst = int(torch.argmin(torch.where(concave, upstream, 0.0)))
        with torch.enable_grad():
            t = net.theta.clone().requires_grad_(True)
            (concave_normal,) = torch.autograd.grad(net.layers(t, slopes)[1][worst], t)
    return KinkAnalysis(
        kinks=k, sharp=int(sharp.sum()), one_sided=int(one_sided.sum()), concave=int(concave.sum()), collapsed=int(sum(d.sum() for d in collapsed)),
        slopes=slopes, upstream=upstream, rel_subgrad=_relative(g, net.theta, lam),
        escape_ratio=best[0] / (2 * lam) if lam > 0 else float("inf"),
        objective=lambda t: net.value(t, slopes), normals=normals, face_normals=face_normals, escape_direction=best[1],
        concave_normal=concave_normal,
    )
