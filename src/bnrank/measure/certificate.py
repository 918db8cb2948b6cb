"""A certificate per network: is it at a local minimum of its regularized objective?

Everything is computed in float64 at the given parameters θ (all P weights and biases of one
network, flattened), for the objective C(θ) = fit(θ) + λ‖θ‖² (bnrank.training.objective):

- ``rel_grad`` = ‖∇C‖ / (‖∇fit‖ + ‖2λθ‖). At a critical point the two terms cancel
  (∇fit = −2λθ), so this is 0 there and at most 1 anywhere; it is scale-free. With the
  smallest curvature of the penalty 2λ, a gradient ‖∇C‖ = ε·2λ‖θ‖ puts the objective within about
  ε²·λ‖θ‖² of a minimum of the local quadratic model, i.e. a relative gap of ~ε² of the penalty.
- ``balance_error``: neuron balancedness (bnrank.training.rebalance; 0 at any critical point).
- ``hessian_max`` and ``hessian_min``: largest and smallest eigenvalues of the Hessian of C
  (ReLU's second derivative read as 0: the Hessian of the net with its activation pattern held),
  the extreme Ritz values of one Lanczos run (LANCZOS_STEPS steps, full re-orthogonalization,
  a fixed start) on Hessian-vector products (autograd double backward on the objective of the
  flat θ, so any differentiable model family works). hessian_min counts as resolved when its
  residual is at most MIN_EIG_TOL_FACTOR · neg_tol. A Ritz value is the Rayleigh quotient of a
  vector, so a hessian_min below −neg_tol proves negative curvature even when unresolved.
- ``kinks`` (ReLU nets): the number of (input, hidden neuron) pre-activations at ReLU's kink
  (bnrank.measure.kinks: within KINK_TOL of 0 relative to their layer's largest, collapsed neurons
  not counted). The objective is not differentiable there and the gradient above is one-sided;
  minima of ReLU nets lie on many kinks. With kinks, the certificate is the kink analysis of
  bnrank.measure.kinks: ``rel_subgrad`` is the relative norm (as rel_grad) of the smallest
  chain-rule subgradient (slopes D* ∈ [0, 1] at the kinks), ``sharp_kinks`` are the kinks off
  which C rises at first order on both sides, ``concave_kinks`` those off which it falls on one
  side, ``one_sided_kinks`` those off which it rises on one side and is flat on the other, and
  the Hessian is that of F_{D*} (the net with a line of slope D*_k at each kink) on the tangent
  space T of the sharp kinks (``tangent_dim``). When hessian_min is negative and there are
  one-sided kinks, ``face_min`` is the smallest Ritz value of the same Hessian on the face T' of
  T tangent to the one-sided kinks too (NaN when not computed). Without kinks rel_subgrad =
  rel_grad, tangent_dim = P and the Hessian is the plain one.

Verdict, in this order (`verdict`, with `reason`):

- ``not_converged``: θ or the objective is not finite, λ ≤ 0 (no regularized minimum to
  certify), ``rel_subgrad > grad_tol`` (default GRAD_TOL), the tangent space too large to build
  (kinks.MAX_TANGENT_ENTRIES), Lanczos did not converge for hessian_min while its value is
  above −neg_tol, or hessian_min < −neg_tol on T while face_min ≥ −neg_tol on T' (undecided:
  the negative direction crosses one-sided kinks, which may block it, bnrank.measure.kinks);
- ``saddle``: a collapsed neuron whose switching on lowers C, a concave kink, or hessian_min <
  −neg_tol without one-sided kinks (face_min < −neg_tol with them), neg_tol = max(NEG_TOL_FACTOR · 2λ, NEG_TOL_REL ·
  hessian_max): a fraction of the penalty's curvature 2λ (the smallest curvature a strict
  minimum of this objective has away from its symmetries), but no finer than Lanczos resolves
  in LANCZOS_STEPS products (the bottom of a spectrum spread over hessian_max takes
  ~√(hessian_max / neg_tol) of them);
- ``local_min`` otherwise: gradient small and no negative curvature beyond neg_tol. Zero
  eigenvalues are allowed: continuous symmetries (rotations of neurons that are active on every
  input, of a linear net's hidden layers) leave C unchanged along whole curves.

A saddle's certificate comes with the direction that proves it (`certify_with_directions`; the
finish leaves saddles along it, bnrank.training.escape): for a collapsed neuron, the switch-on
direction of the largest gain; for concave kinks, the normal ∇α_k of the most concave one,
projected onto the tangent space of the sharp kinks (unprojected if it lies in their span); for
negative curvature, the Ritz vector of hessian_min (of face_min with one-sided kinks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor

from bnrank.config import MseReduction
from bnrank.measure.kinks import KINK_TOL, KinkAnalysis, analyze_kinks, kink_masks
from bnrank.models import HOMOGENEOUS, EnsembleMLP
from bnrank.training.objective import mse_scale

GRAD_TOL = 1e-3
"""Largest relative gradient of a certified minimum: the objective is then within ~1e-6 of the
penalty term of the local quadratic model's minimum (module docstring)."""
NEG_TOL_FACTOR = 0.01
"""Negative curvature tolerated, as a fraction of the penalty's curvature 2λ."""
NEG_TOL_REL = 1e-6
"""...and at least this fraction of hessian_max (what LANCZOS_STEPS Lanczos steps resolve)."""
MIN_EIG_TOL_FACTOR = 0.1
"""hessian_min counts as resolved when its Ritz residual is at most MIN_EIG_TOL_FACTOR · neg_tol."""
LANCZOS_STEPS = 500
"""Lanczos steps (Hessian-vector products) per network, for both extremes."""

VERDICTS = ("local_min", "saddle", "not_converged")


@dataclass
class Certificate:
    """One network's certificate; `asdict` keys prefixed ``cert_`` are the table columns."""

    verdict: str
    reason: str
    objective: float
    rel_grad: float
    rel_subgrad: float
    grad_norm: float
    balance_error: float
    hessian_min: float
    hessian_max: float
    neg_tol: float
    kinks: int
    sharp_kinks: int
    one_sided_kinks: int
    concave_kinks: int
    collapsed: int
    escape_ratio: float
    tangent_dim: int
    face_min: float
    hvps: int

    def row(self) -> dict:
        """The ``cert_*`` columns; a value that is not finite is None (never written as NaN)."""
        return {f"cert_{k}": None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}


def _lanczos_extremes(matvec: Callable[[np.ndarray], np.ndarray], n: int,
                      start: Callable[[np.ndarray], np.ndarray] = lambda v: v
                      ) -> tuple[float, float, float, float, np.ndarray]:
    """(smallest, largest) Ritz values of a symmetric n × n operator after min(n, LANCZOS_STEPS)
    Lanczos steps with full re-orthogonalization from a fixed start (mapped by `start`, e.g. onto
    the operator's range), their residual norms ‖Hv − θv‖ (each Ritz value lies within its
    residual of an eigenvalue; with n steps, exact), and the unit Ritz vector (n,) of the smallest."""
    k = min(n, LANCZOS_STEPS)
    basis = np.zeros((k, n))
    alpha, beta = [], []
    q = start(np.random.default_rng(0).standard_normal(n))
    q /= np.linalg.norm(q)
    last = 0.0
    for j in range(k):
        basis[j] = q
        w = matvec(q)
        alpha.append(float(q @ w))
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        last = float(np.linalg.norm(w))
        if j == k - 1 or last <= 1e-13 * max(abs(a) for a in alpha):
            break
        beta.append(last)
        q = w / last
    m = len(alpha)
    t = np.diag(alpha) + np.diag(beta[: m - 1], 1) + np.diag(beta[: m - 1], -1)
    vals, vecs = np.linalg.eigh(t)
    res = last * np.abs(vecs[-1])
    return float(vals[0]), float(vals[-1]), float(res[0]), float(res[-1]), basis[:m].T @ vecs[:, 0]


def certify_function(
    objective: Callable[[Tensor], Tensor], theta: Tensor, lam: float, balance: float = float("nan"),
    kinks: KinkAnalysis | None = None, grad_tol: float = GRAD_TOL, neg_tol_factor: float = NEG_TOL_FACTOR,
) -> Certificate:
    """The certificate of a scalar objective C(θ) = fit(θ) + lam·‖θ‖² at a flat θ (P,).

    `objective` maps a float64 (P,) tensor to the scalar C (the penalty included); `balance` is
    reported as it is; `kinks`: the kink analysis at θ (ReLU nets), whose smallest subgradient,
    objective F_{D*} and tangent space replace the plain gradient and Hessian when there are
    kinks. See the module docstring for the quantities and the verdict.
    """
    return certify_with_direction(objective, theta, lam, balance, kinks, grad_tol, neg_tol_factor)[0]


def certify_with_direction(
    objective: Callable[[Tensor], Tensor], theta: Tensor, lam: float, balance: float = float("nan"),
    kinks: KinkAnalysis | None = None, grad_tol: float = GRAD_TOL, neg_tol_factor: float = NEG_TOL_FACTOR,
) -> tuple[Certificate, Tensor | None]:
    """`certify_function`'s certificate and, for a ``saddle``, the unit direction (P,) that proves
    it (module docstring): C falls along it at first order (concave kink) or second order (a collapsed
    neuron switched on, negative curvature on the tangent space); None for any other verdict."""
    theta = theta.detach().to(torch.float64).clone().requires_grad_(True)
    nan = float("nan")
    n_kinks = kinks.kinks if kinks is not None else 0
    found = kinks is not None
    counts = {"kinks": n_kinks, "sharp_kinks": kinks.sharp if found else 0, "one_sided_kinks": kinks.one_sided if found else 0,
              "concave_kinks": kinks.concave if found else 0,
              "collapsed": kinks.collapsed if found else 0, "escape_ratio": kinks.escape_ratio if found else nan}

    def verdict(v: str, reason: str, **kw) -> Certificate:
        vals = {"objective": nan, "rel_grad": nan, "rel_subgrad": nan, "grad_norm": nan, "hessian_min": nan,
                "hessian_max": nan, "face_min": nan, "hvps": 0, "neg_tol": neg_tol_factor * 2 * lam, "tangent_dim": 0} | kw
        return Certificate(v, reason, balance_error=balance, **counts, **vals), None

    if not torch.isfinite(theta).all():
        return verdict("not_converged", "parameters are not finite")
    with torch.enable_grad():
        value = objective(theta)
        if not torch.isfinite(value):
            return verdict("not_converged", "objective is not finite")
        (g,) = torch.autograd.grad(value, theta)
    penalty = 2 * lam * theta.detach()
    gnorm = g.norm().item()
    rel = gnorm / max((g - penalty).norm().item() + penalty.norm().item(), 1e-300)
    sub = kinks.rel_subgrad if n_kinks else rel
    base = {"objective": value.item(), "rel_grad": rel, "rel_subgrad": sub, "grad_norm": gnorm}
    if not (np.isfinite(rel) and np.isfinite(sub)):
        return verdict("not_converged", "gradient is not finite", **base)
    if kinks is not None:
        projection = kinks.projector()
        if projection is None:
            return verdict("not_converged", f"{kinks.sharp} sharp kinks: tangent space too large to build", **base)
        project, dim = projection
        piece = kinks.objective
    else:
        (project, dim), piece = ((lambda v: v), theta.numel()), objective
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(piece(theta), theta, create_graph=True)
    count = [0]

    def extremes(on: Callable[[Tensor], Tensor]) -> tuple[float, float, float, float, np.ndarray]:
        """`_lanczos_extremes` of the Hessian of `piece` projected by `on`."""
        def hvp(v: np.ndarray) -> np.ndarray:
            count[0] += 1
            u = on(torch.as_tensor(v.ravel(), dtype=torch.float64))
            (hu,) = torch.autograd.grad(grad, theta, grad_outputs=u, retain_graph=True)
            return on(hu.detach()).numpy()

        return _lanczos_extremes(hvp, theta.numel(), lambda v: on(torch.as_tensor(v)).numpy())

    h_min, h_max, res_min, _, ritz = extremes(project)
    # (on T, P's null directions are eigenvectors of PHP with eigenvalue 0: never below -neg_tol)
    neg_tol = max(neg_tol_factor * 2 * lam, NEG_TOL_REL * max(h_max, 0.0))
    ok = res_min <= MIN_EIG_TOL_FACTOR * neg_tol
    base |= {"hessian_min": h_min, "hessian_max": h_max, "hvps": count[0], "neg_tol": neg_tol, "tangent_dim": dim}
    where = f" on the tangent space of {kinks.sharp} sharp kinks" if n_kinks else ""
    if lam <= 0:
        return verdict("not_converged", "lambda is 0: no regularized minimum to certify", **base)
    if sub > grad_tol:
        what = f"smallest subgradient over {n_kinks} kinks" if n_kinks else "relative gradient"
        return verdict("not_converged", f"{what} {sub:.2e} > {grad_tol:g}", **base)
    if not np.isfinite(h_min):
        return verdict("not_converged", "Hessian eigenvalues are not finite", **base)
    if counts["escape_ratio"] > 1:
        return verdict("saddle", f"switching on a collapsed neuron lowers C: gain {counts['escape_ratio']:.3g}·2λ",
                       **base)[0], kinks.escape_direction
    if counts["concave_kinks"]:
        normal = project(kinks.concave_normal)
        normal = normal if normal.norm() > 1e-8 * kinks.concave_normal.norm() else kinks.concave_normal
        return verdict("saddle", f"{counts['concave_kinks']} concave kinks: C falls off them at first order",
                       **base)[0], normal / normal.norm()
    if h_min < -neg_tol and counts["one_sided_kinks"]:
        on_face, face_dim = kinks.projector(face=True)
        f_min, _, _, _, ritz = extremes(on_face) if face_dim else (0.0, 0.0, 0.0, 0.0, None)
        base |= {"face_min": f_min, "hvps": count[0]}
        face = f"the tangent space of {kinks.sharp} sharp and {kinks.one_sided} one-sided kinks"
        if not f_min < -neg_tol:
            return verdict("not_converged", f"negative curvature {h_min:.3e}{where}, none below -{neg_tol:.1e} "
                           f"({f_min:.1e}) on {face}: undecided", **base)
        return verdict("saddle", f"negative curvature {f_min:.3e} < -{neg_tol:.1e} on {face}",
                       **base)[0], torch.as_tensor(ritz, dtype=torch.float64)
    if h_min < -neg_tol:
        return verdict("saddle", f"negative curvature {h_min:.3e} < -{neg_tol:.1e}{where}",
                       **base)[0], torch.as_tensor(ritz, dtype=torch.float64)
    if not ok:
        return verdict("not_converged", f"smallest Hessian eigenvalue{where} unresolved in {LANCZOS_STEPS} Lanczos steps", **base)
    what = f"smallest subgradient over {n_kinks} kinks" if n_kinks else "relative gradient"
    return verdict("local_min", f"{what} {sub:.1e}, smallest eigenvalue{where} {h_min:.1e} >= -{neg_tol:.1e}", **base)


def member_objective(model, x: Tensor, y: Tensor, lam: float, reduction: MseReduction) -> tuple[Callable, Tensor]:
    """(C, θ) for a one-member ensemble: C maps a flat float64 θ to its regularized objective
    fit + λ·R(θ), through the family's pure `member_forward` and `member_param_norm_sq`, so any
    model family works."""
    params = [p.detach()[0] for p in model.parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    scale = mse_scale(reduction, y.shape[-1])

    def objective(theta: Tensor) -> Tensor:
        parts = [t.view(s) for t, s in zip(torch.split(theta, sizes), shapes)]
        fit = (model.member_forward(parts, x) - y).square().sum(-1).mean() * scale
        return fit + lam * model.member_param_norm_sq(parts)

    return objective, torch.cat([p.reshape(-1) for p in params])


def certify(
    model, x: Tensor, y: Tensor, lam: list[float] | float, reduction: MseReduction = "sum",
    grad_tol: float = GRAD_TOL, neg_tol_factor: float = NEG_TOL_FACTOR, kink_tol: float = KINK_TOL,
) -> list[Certificate]:
    """The certificate of every member of `model` on (x, y) at regularization `lam` (one value or
    one per member): x (N, d_in) shared or (E, N, d_in), y likewise. Member by member, in float64.
    `kink_tol`: pre-activations within it of 0 (relative to their layer's largest) are kinks.
    A ReLU MLP on kinks gets the kink analysis (bnrank.measure.kinks); another family with
    kinks is ``not_converged`` (its kink analysis is not built)."""
    return [c for c, _ in certify_with_directions(model, x, y, lam, reduction, grad_tol, neg_tol_factor, kink_tol)]


def certify_with_directions(
    model, x: Tensor, y: Tensor, lam: list[float] | float, reduction: MseReduction = "sum",
    grad_tol: float = GRAD_TOL, neg_tol_factor: float = NEG_TOL_FACTOR, kink_tol: float = KINK_TOL,
    members: list[int] | None = None,
) -> list[tuple[Certificate, Tensor | None]]:
    """`certify`'s certificates of `members` (default all), each with its saddle direction
    (`certify_with_direction`: a unit float64 (P,) vector in the order of ``model.parameters()``,
    or None)."""
    lams = [float(v) for v in lam] if isinstance(lam, (list, tuple)) else [float(lam)] * model.members
    members = list(range(model.members)) if members is None else list(members)
    model64 = model.select(members).double()
    bal = model64.balance_error().tolist() if model64.has(HOMOGENEOUS) else [float("nan")] * len(members)
    xs = (x[members] if x.dim() == 3 else x).to(torch.float64)
    masks, collapsed = kink_masks(model64, xs, kink_tol)
    analyzable = isinstance(model64, EnsembleMLP) and model64.activation == "relu"
    scale = mse_scale(reduction, y.shape[-1])
    out = []
    for i, e in enumerate(members):
        one = model64.select([i])
        xe = (x[e] if x.dim() == 3 else x).to(torch.float64)
        ye = (y[e] if y.dim() == 3 else y).to(torch.float64)
        fn, theta = member_objective(one, xe, ye, lams[e], reduction)
        mine = [m[i] for m in masks]
        count = int(sum(m.sum() for m in mine))
        finite = bool(torch.isfinite(theta).all())
        kinks = analyze_kinks(one, xe, ye, lams[e], scale, mine, [d[i] for d in collapsed]) \
            if analyzable and finite and lams[e] > 0 else None
        cert, direction = certify_with_direction(fn, theta, lams[e], bal[i], kinks, grad_tol, neg_tol_factor)
        if count and not analyzable:
            cert, direction = replace(cert, verdict="not_converged", kinks=count, reason=(
                f"{count} pre-activations on a ReLU kink (the kink analysis covers ReLU MLPs)")), None
        out.append((cert, direction))
    return out


def finish_kink_tol(train) -> float:
    """The kink tolerance for the end point of a TrainConfig `train`: the last smoothing width of
    its lbfgs finish (a smoothed finish stops within about that width of the kinks, kinks.KINK_TOL),
    KINK_TOL without a smoothed finish."""
    widths = [p.smoothing[-1] for p in train.phases if p.optimizer == "lbfgs" and p.smoothing]
    return max(widths[-1], KINK_TOL) if widths else KINK_TOL


def certificate_rows(model, x: Tensor, y: Tensor, lam: list[float] | float, train, enabled: bool = True) -> list[dict]:
    """One dict of ``cert_*`` columns per member (`certify` at the TrainConfig `train`'s objective
    and `finish_kink_tol`; empty dicts unless `enabled`): what a run's summary and a sweep's runs
    table record for each network (TrainConfig.certify)."""
    if not enabled:
        return [{} for _ in range(model.members)]
    return [c.row() for c in certify(model, x, y, lam, train.mse_reduction, kink_tol=finish_kink_tol(train))]
