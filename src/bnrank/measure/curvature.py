"""Curvature (docs/theory.md §4): NTK trace and top eigenvalue, top Hessian eigenvalue.

Conventions, per member, for N inputs x_i and outputs in R^{d_out}:

- NTK Gram Θ: the (N·d_out × N·d_out) matrix J Jᵀ, J = ∂(f(x_1), ..., f(x_N))/∂θ over all
  weights and biases; rows ordered point-major (x_1's outputs first).
- NTK trace at x: Tr Θ(x, x) = Σ_θ ‖∂f(x)/∂θ‖² summed over the d_out outputs (not a mean).
  Since ∂f/∂W_ℓ = G_ℓ ⊗ σ(α_{ℓ-1}) and ∂f/∂b_ℓ = G_ℓ with G_ℓ = ∂f/∂α_ℓ, it is
  Σ_ℓ (‖σ(α_{ℓ-1}(x))‖² + 1)·‖G_ℓ(x)‖_F² (with σ(α_0) read as x itself): no parameter
  Jacobian is formed.
- ntk_top: λ_max(Θ)/N. The Gauss-Newton part of the Hessian below is (2/N)JᵀJ, whose top
  eigenvalue is 2·ntk_top; at small training error it dominates, so hessian_top ≈ 2·ntk_top + 2λ.
- hessian_top: λ_max of the Hessian of (1/N) Σ_i ‖f(x_i) − y_i‖² + λ‖θ‖² (the 2λ of the
  penalty is added to every eigenvalue), the largest algebraic eigenvalue.

Both top eigenvalues come from Lanczos (`scipy.sparse.linalg.eigsh` with relative tolerance
LANCZOS_TOL, LANCZOS_NCV vectors and a fixed start vector, so results are reproducible), one
member at a time, on exact matrix-vector products written out for ReLU nets with the activation
pattern held fixed (exact almost everywhere, since σ'' = 0 off the kinks): Θv = J(Jᵀv) costs
about 4 and a Hessian-vector product about 6 multiply-adds per (input, weight) pair, each
product batched over the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import Tensor

LANCZOS_TOL = 1e-4
"""eigsh's relative residual tolerance for ntk_top and hessian_top. The error of a Ritz value is at
most the residual and typically its square over the spectral gap (≈ 1e-8 relative or better)."""
LANCZOS_NCV = 8
"""Lanczos vectors kept by eigsh (about 13 products per top eigenvalue on a depth-25 net)."""


def ntk_trace(inputs: Sequence[Tensor], grad_sq: Tensor, bias: bool = True) -> Tensor:
    """Tr Θ(x, x) for every input: inputs = layer inputs [x, σ(α_1), ..., σ(α_{L-1})], each
    (E, N, d_{ℓ-1}); grad_sq = ‖∂f(x)/∂α_ℓ‖_F², (E, N, L); `bias`: whether the net has biases
    (each adds ‖G_ℓ‖²). Returns (E, N)."""
    in_sq = torch.stack([h.square().sum(-1) for h in inputs], dim=-1)  # (E, N, L)
    return ((in_sq + float(bias)) * grad_sq).sum(-1)


class _Linearized:
    """One network linearized at N inputs: its weights, layer inputs h_{ℓ-1} and activation
    masks D_ℓ (the ReLU pattern; all ones for a linear net). Without biases (`bias` False) the
    parameter vector holds the weights only."""

    def __init__(self, weights: Sequence[Tensor], inputs: Sequence[Tensor], preacts: Sequence[Tensor],
                 relu: bool = True, bias: bool = True):
        self.w = list(weights)  # (d_ℓ, d_{ℓ-1})
        self.h = list(inputs)  # h_{ℓ-1}: (N, d_{ℓ-1})
        self.m = [(a > 0).to(a.dtype) if relu else torch.ones_like(a) for a in preacts[:-1]]  # D_ℓ, ℓ = 1..L-1: (N, d_ℓ)
        self.out = preacts[-1]
        self.bias = bias
        self.sizes = [s for w in self.w for s in ((w.numel(), w.shape[0]) if bias else (w.numel(),))]

    def split(self, theta: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """A flat parameter vector [vec W_1, b_1, ..., vec W_L, b_L] (no b_ℓ without biases) → [(W_ℓ, b_ℓ)]."""
        parts = torch.split(theta, self.sizes)
        if not self.bias:
            return [(p.view_as(w), None) for p, w in zip(parts, self.w)]
        return [(parts[2 * i].view_as(w), parts[2 * i + 1]) for i, w in enumerate(self.w)]

    def jvp(self, tangent: list[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """∂α_ℓ/∂θ · tangent for ℓ = 1..L, each (N, d_ℓ) (J u is the last)."""
        outs, t = [], None
        for i, (dw, db) in enumerate(tangent):
            new = self.h[i] @ dw.T if db is None else torch.addmm(db, self.h[i], dw.T)
            if t is not None:
                new.addmm_(t * self.m[i - 1], self.w[i].T)
            outs.append(new)
            t = new
        return outs

    def vjp(self, cot: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """Jᵀ cot for a cotangent cot of the outputs (N, d_out): [(∂/∂W_ℓ, ∂/∂b_ℓ)]."""
        grads = []
        for i in range(len(self.w) - 1, -1, -1):
            grads.append((cot.T @ self.h[i], cot.sum(0) if self.bias else None))
            if i > 0:
                cot = (cot @ self.w[i]) * self.m[i - 1]
        return grads[::-1]

    def ntk_matvec(self, v: Tensor) -> Tensor:
        """Θ v = J Jᵀ v for v (N·d_out,), point-major."""
        return self.jvp(self.vjp(v.view_as(self.out)))[-1].reshape(-1)

    def hvp(self, u: Tensor, y: Tensor, lam: float) -> Tensor:
        """Hessian-vector product of (1/N)Σ‖f(x_i) − y_i‖² + λ‖θ‖² with a flat u."""
        n = self.out.shape[0]
        tangent = self.split(u)
        r_alpha = self.jvp(tangent)  # R{α_ℓ}
        delta = (2.0 / n) * (self.out - y)  # ∂loss/∂α_L
        r_delta = (2.0 / n) * r_alpha[-1]
        out = []
        for i in range(len(self.w) - 1, -1, -1):
            gw = r_delta.T @ self.h[i]
            if i > 0:
                gw.addmm_(delta.T, r_alpha[i - 1] * self.m[i - 1])  # δ_ℓᵀ R{h_{ℓ-1}}
            out.append((gw, r_delta.sum(0) if self.bias else None))
            if i > 0:
                vw = tangent[i][0]
                r_delta = (r_delta @ self.w[i] + delta @ vw) * self.m[i - 1]
                delta = (delta @ self.w[i]) * self.m[i - 1]
        flat = torch.cat([t.reshape(-1) for pair in out[::-1] for t in pair if t is not None])
        return flat + 2.0 * lam * u


def top_eigenvalue(matvec, n: int, dtype: torch.dtype, device: torch.device) -> float:
    """Largest eigenvalue of the symmetric n × n operator `matvec` (a torch (n,) → (n,) map)."""
    from scipy.sparse.linalg import LinearOperator, eigsh  # slow to import: only when asked for

    def apply(v: np.ndarray) -> np.ndarray:
        return matvec(torch.as_tensor(v.ravel(), dtype=dtype, device=device)).cpu().numpy()

    if n <= 2:  # too small for ARPACK: form the matrix
        dense = np.stack([apply(col) for col in np.eye(n)], axis=1)
        return float(np.linalg.eigvalsh((dense + dense.T) / 2)[-1])
    op = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    return float(eigsh(op, k=1, which="LA", tol=LANCZOS_TOL, ncv=min(n, LANCZOS_NCV), v0=v0, return_eigenvectors=False)[0])


def _member(tensors: Sequence[Tensor], e: int) -> list[Tensor]:
    return [t[e] for t in tensors]


def ntk_top(weights: Sequence[Tensor], inputs: Sequence[Tensor], preacts: Sequence[Tensor], relu: bool = True,
            bias: bool = True) -> Tensor:
    """λ_max(Θ)/N for every member: (E,). weights[ℓ-1]: (E, d_ℓ, d_{ℓ-1}); inputs: the layer
    inputs [x, σ(α_1), ..., σ(α_{L-1})] and preacts: [α_1, ..., α_L], each (E, N, d)."""
    E, n, d_out = preacts[-1].shape
    ref = preacts[-1]
    tops = []
    for e in range(E):  # one Lanczos run per member; each product is batched over the inputs
        net = _Linearized(_member(weights, e), _member(inputs, e), _member(preacts, e), relu, bias)
        tops.append(top_eigenvalue(net.ntk_matvec, n * d_out, ref.dtype, ref.device) / n)
    return torch.tensor(tops, dtype=ref.dtype, device=ref.device)


def hessian_top(
    weights: Sequence[Tensor], inputs: Sequence[Tensor], preacts: Sequence[Tensor], y: Tensor, lam: Sequence[float],
    mse_scale: float = 1.0, relu: bool = True, bias: bool = True,
) -> Tensor:
    """Top Hessian eigenvalue of s·(1/N)Σ‖f(x_i) − y_i‖² + λ_e‖θ‖² for every member e: (E,).
    y: (N, d_out); s = `mse_scale` (1/d_out for the "mean" objective)."""
    ref = preacts[-1]
    tops = []
    for e in range(ref.shape[0]):
        net = _Linearized(_member(weights, e), _member(inputs, e), _member(preacts, e), relu, bias)
        n_params = sum(net.sizes)
        # s·H_sum + 2λI = s·(H_sum + 2(λ/s)I): the "sum" product at λ/s, scaled
        hvp = partial(net.hvp, y=y, lam=float(lam[e]) / mse_scale)
        tops.append(top_eigenvalue(lambda u, hvp=hvp: mse_scale * hvp(u), n_params, ref.dtype, ref.device))
    return torch.tensor(tops, dtype=ref.dtype, device=ref.device)
