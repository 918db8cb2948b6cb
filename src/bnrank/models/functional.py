"""The generic reference path of every model family, through torch.func.

Each function differentiates a family's pure `member_forward(params, x)` (one member) and maps
it over the ensemble's members with ``torch.func.vmap`` (the member axis of every stacked
parameter, and of x and y when they are (E, N, d)). It works for any family and is the
reference every hand-written fast path is tested against (tests/test_functional.py); it is
slower than a fast path (bench/README.md, "Generic path").
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.func import grad, jacrev, jvp, vjp, vmap

from bnrank.training.objective import mse_scale


def _params(model) -> list[Tensor]:
    return [p.detach() for p in model.parameters()]


def _dim(t: Tensor) -> int | None:
    """vmap axis of an input or target: 0 when per member (E, N, d), None when shared (N, d)."""
    return 0 if t.dim() == 3 else None


def forward(model, x: Tensor) -> Tensor:
    """f(x) of every member (E, N, d_out), differentiable in the model's parameters."""
    return vmap(model.member_forward, in_dims=(0, _dim(x)))(list(model.parameters()), x)


def member_objective(model, params: Sequence[Tensor], x: Tensor, y: Tensor, lam: Tensor, scale: float) -> tuple[Tensor, tuple]:
    """One member's C = scale·(1/N)Σ‖f(x_i) − y_i‖² + λ·R(θ), with (C, mse, R) as auxiliaries."""
    err = (model.member_forward(params, x) - y).square().sum(-1).mean() * scale
    norm = model.member_param_norm_sq(params)
    obj = err + lam * norm
    return obj, (obj, err, norm)


def objective_and_grads(model, x: Tensor, y: Tensor, lam: Tensor, reduction: str = "sum"):
    """(objective, mse, R(θ), grads): three (E,) tensors and one gradient per parameter (E, ...)."""
    scale = mse_scale(reduction, y.shape[-1])

    def one(params, xe, ye, lame):
        return member_objective(model, params, xe, ye, lame, scale)

    grads, (obj, err, norm) = vmap(grad(one, has_aux=True), in_dims=(0, _dim(x), _dim(y), 0))(_params(model), x, y, lam)
    return obj, err, norm, list(grads)


def input_jacobians(model, x: Tensor) -> Tensor:
    """Jf(x) at every input for every member: x (N, d_in) → (E, N, d_out, d_in)."""

    def at_point(params, xi):
        return jacrev(lambda v: model.member_forward(params, v[None])[0])(xi)

    return vmap(vmap(at_point, in_dims=(None, 0)), in_dims=(0, None))(_params(model), x)


def output_jvp(model, x: Tensor, tangent: Sequence[Tensor]) -> Tensor:
    """J_θ f(x)·t for a parameter tangent t (stacked like the parameters): (E, N, d_out)."""

    def one(params, t):
        return jvp(lambda ps: model.member_forward(ps, x), (params,), (t,))[1]

    return vmap(one)(_params(model), list(tangent))


def output_vjp(model, x: Tensor, cotangent: Tensor) -> list[Tensor]:
    """J_θ f(x)ᵀ·c for an output cotangent c (E, N, d_out): one tensor per parameter (E, ...)."""

    def one(params, c):
        _, pull = vjp(lambda ps: model.member_forward(ps, x), params)
        return pull(c)[0]

    return list(vmap(one)(_params(model), cotangent))


def ntk_trace(model, x: Tensor) -> Tensor:
    """Σ_θ ‖∂f(x)/∂θ‖² summed over the outputs, at every input: (E, N). Forms each point's
    parameter Jacobian, so it costs d_out backward passes per point: for small nets and tests."""

    def at_point(params, xi):
        jac = jacrev(lambda ps: model.member_forward(ps, xi[None])[0])(params)
        return sum(j.square().sum() for j in jac)

    return vmap(vmap(at_point, in_dims=(None, 0)), in_dims=(0, None))(_params(model), x)


def hvp(model, x: Tensor, y: Tensor, lam: Tensor, tangent: Sequence[Tensor], reduction: str = "sum") -> list[Tensor]:
    """Hessian of each member's objective times a tangent t (stacked like the parameters)."""
    scale = mse_scale(reduction, y.shape[-1])

    def one(params, xe, ye, lame, t):
        g = grad(lambda ps: member_objective(model, ps, xe, ye, lame, scale)[0])
        return jvp(g, (params,), (t,))[1]

    return list(vmap(one, in_dims=(0, _dim(x), _dim(y), 0, 0))(_params(model), x, y, lam, list(tangent)))
