"""Input Jacobians of MLPs, batched over members and inputs (docs/theory.md §2).

For a ReLU net, Jf(x) = W_L D_{L-1}(x) W_{L-1} ⋯ D_1(x) W_1 with D_ℓ(x) = diag(α_ℓ(x) > 0)
(σ'(0) = 0, as torch's autograd); for a linear net every D_ℓ = I. It is computed backwards, G_L = I and
G_{ℓ-1} = G_ℓ W_ℓ D_{ℓ-1}, where G_ℓ(x) = ∂f(x)/∂α_ℓ (d_out × d_ℓ): one batched matmul per layer
for all members and inputs at once, and Jf = G_1 W_1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class InputJacobians:
    """jac: Jf(x), (E, N, d_out, d_in); grad_sq: ‖∂f(x)/∂α_ℓ‖_F² for ℓ = 1..L, (E, N, L)."""

    jac: Tensor
    grad_sq: Tensor


def input_jacobians(weights: Sequence[Tensor], preacts: Sequence[Tensor], activation: str = "relu") -> InputJacobians:
    """Jacobians of f at the N inputs whose pre-activations `preacts` ([α_1..α_L], each (E, N, d_ℓ)) are given.

    weights[ℓ-1]: (E, d_ℓ, d_{ℓ-1}). Cost: N·d_out·Σ_ℓ d_ℓ·d_{ℓ-1} multiply-adds per member;
    memory: two (E, N, d_out, d_ℓ) tensors at a time (128 MB in float64 for E = 4, N = 1000,
    d_out = 20, d_ℓ = 200).
    """
    E, N, d_out = preacts[-1].shape
    depth = len(weights)
    grad_sq = preacts[-1].new_empty(E, N, depth)
    grad_sq[:, :, depth - 1] = d_out  # ∂f/∂α_L = I
    if depth == 1:
        return InputJacobians(weights[0][:, None].expand(E, N, *weights[0].shape[1:]), grad_sq)
    relu = activation == "relu"
    # G_{L-1}: (E, N, d_out, d_{L-1})
    g = weights[-1][:, None] * (preacts[-2] > 0)[:, :, None, :] if relu else weights[-1][:, None].expand(E, N, *weights[-1].shape[1:])
    for layer in range(depth - 1, 0, -1):  # g = G_layer (1-based layer index)
        grad_sq[:, :, layer - 1] = torch.linalg.vector_norm(g, dim=(2, 3)).square()
        w = weights[layer - 1]
        g = torch.bmm(g.reshape(E, N * d_out, -1), w).view(E, N, d_out, w.shape[2])
        if relu and layer > 1:
            g.mul_((preacts[layer - 2] > 0)[:, :, None, :])
    return InputJacobians(g, grad_sq)


def jacobian_spectra(jac: Tensor) -> Tensor:
    """Singular values of every Jf(x), descending: (E, N, d_out, d_in) → (E, N, min(d_out, d_in))."""
    return torch.linalg.svdvals(jac)


def default_rtol(d_in: int, d_out: int, dtype: torch.dtype) -> float:
    """numpy.linalg.matrix_rank's tolerance relative to the largest singular value: max(d_in, d_out)·eps."""
    return max(d_in, d_out) * torch.finfo(dtype).eps


def jacobian_rank(spectrum: Tensor, rtol: float) -> Tensor:
    """# singular values > rtol × the largest (0 for a zero Jacobian): (..., m) → (...,) int64."""
    return (spectrum > rtol * spectrum[..., :1]).sum(-1)


def log_pdet(spectrum: Tensor, rank: Tensor) -> Tensor:
    """log|J|₊ = Σ_{i ≤ rank} log s_i, the log pseudo-determinant (0 for rank 0): (..., m), (...) → (...)."""
    top = torch.arange(spectrum.shape[-1], device=spectrum.device) < rank[..., None]
    return torch.where(top, torch.log(spectrum), 0).sum(-1)


def schatten(spectrum: Tensor, rank: Tensor, depth: int) -> Tensor:
    """L·Σ_{i ≤ rank} s_i^{2/L}, a lower bound on ‖θ‖² (docs/theory.md §2): (..., m), (...) → (...).

    Singular values beyond the numerical rank are read as exact zeros (at large L even a
    round-off 1e-16 would add about L to the sum); dropping them keeps the bound valid.
    """
    top = torch.arange(spectrum.shape[-1], device=spectrum.device) < rank[..., None]
    return depth * torch.where(top, spectrum.pow(2.0 / depth), 0).sum(-1)
