"""Leaky ResNet measurements (Jacot & Kaiser 2024, docs/theory.md §6): representation path, Cost of
Identity, kinetic and potential energies and the Hamiltonian along the layers.

Convention: a representation is the paper's A = α(X) ∈ R^{w×N} (one column per input); here
it is stored as its transpose R = Aᵀ (E, N, w), so A σ̃(A)⁺ = (S⁺ R)ᵀ with S = σ̃(A)ᵀ =
[ReLU(R), 1] (E, N, w+1). With c the family's norm factor (1/(2L̃), 1/2 at L̃ = 0) and the path's
velocity at step ℓ, Ȧ_ℓ = (A_ℓ − A_{ℓ-1})/ρ_ℓ, evaluated at A = A_{ℓ-1} (the network's own
discretization: W̃_ℓ σ̃(A_{ℓ-1}) = Ȧ_ℓ + L̃ A_{ℓ-1}):

    Cost of Identity  CoI(A) = ‖A σ̃(A)⁺‖_F²
    Lagrangian        ℒ_ℓ = c ‖(Ȧ + L̃ A) σ̃(A)⁺‖_F²        (≤ c‖W̃_ℓ‖_F², equal for the min-norm W̃_ℓ)
    kinetic           K_ℓ = c ‖Ȧ σ̃(A)⁺‖_F²
    potential         V_ℓ = c L̃² CoI(A)                     (= (L̃/2)·CoI for L̃ > 0)
    Hamiltonian       H_ℓ = K_ℓ − V_ℓ                       (the Legendre transform of ℒ; constant
                                                          along a minimizing path in the continuous limit)

so −(2/L̃) H = CoI − ‖Ȧ σ̃⁺‖²/L̃², ≈ CoI ≈ the bottleneck rank where the path rests (large L̃).

Bounds (any A; P = the projector on σ̃(A)'s row space): by Cauchy–Schwarz
‖A P‖_* = ⟨UVᵀ, A σ̃⁺ σ̃⟩ ≤ ‖A σ̃⁺‖_F ‖σ̃(A)‖_F, so CoI(A) ≥ ‖AP‖_*² / ‖σ̃(A)‖_F² (`coi_bound`).
When A lies in σ̃(A)'s row space (`coi_residual` = ‖A − AP‖_F/‖A‖_F = 0) this is
‖A‖_*²/‖σ̃(A)‖_F², which is the quoted ‖A‖_*²/‖A‖_F² (`nuclear_ratio`) up to the factor
‖A‖_F²/‖σ̃(A)‖_F²; `nuclear_ratio` itself is no bound once the bias row of σ̃ dominates
(‖σ̃(A)‖_F² = ‖ReLU(A)‖_F² + N > ‖A‖_F², tests/test_leaky_measure.py shows a case).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from bnrank.measure.activations import relative_rank

MEASURE_DTYPE = torch.float64


def sigma_tilde(r: Tensor) -> Tensor:
    """S = σ̃(A)ᵀ = [ReLU(R), 1]: (..., N, w) → (..., N, w + 1)."""
    return torch.cat([torch.relu(r), torch.ones_like(r[..., :1])], -1)


def identity_map(r: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """(M, S⁺) with M = S⁺R = (A σ̃(A)⁺)ᵀ (..., w + 1, w) and S⁺ = pinv(σ̃(A)ᵀ) (..., w + 1, N);
    `rtol`: singular values of S below rtol × the largest count as zero (torch's default)."""
    s_pinv = torch.linalg.pinv(sigma_tilde(r), rtol=rtol) if rtol is not None else torch.linalg.pinv(sigma_tilde(r))
    return s_pinv @ r, s_pinv


def cost_of_identity(r: Tensor, rtol: float | None = None) -> Tensor:
    """‖A σ̃(A)⁺‖_F² of R = Aᵀ (..., N, w) → (...)."""
    return identity_map(r, rtol)[0].square().sum((-2, -1))


def coi_bound(r: Tensor, rtol: float | None = None) -> Tensor:
    """‖AP‖_*² / ‖σ̃(A)‖_F² ≤ CoI(A) (module docstring): (..., N, w) → (...)."""
    m, s_pinv = identity_map(r, rtol)
    projected = sigma_tilde(r) @ m  # (AP)ᵀ
    return torch.linalg.svdvals(projected).sum(-1).square() / sigma_tilde(r).square().sum((-2, -1))


def nuclear_ratio(r: Tensor) -> Tensor:
    """‖A‖_*² / ‖A‖_F² (an effective rank: k for k equal singular values): (..., N, w) → (...)."""
    s = torch.linalg.svdvals(r)
    return s.sum(-1).square() / s.square().sum(-1)


def leaky_measurements(model, x, threshold: float = 0.1, k_star: int | None = None,
                       rtol: float | None = None) -> dict[str, pd.DataFrame]:
    """The path and energy tables of a Leaky ResNet ensemble on inputs x (N, d_in), in float64.

    ``layers``, one row per (member, layer ℓ = 0..L), ℓ = 0 the embedded input: p = ρ_1 + … + ρ_ℓ;
    rho = ρ_ℓ; singular_values of A_ℓ (descending); rank: # > threshold × the largest;
    nuclear_ratio = ‖A_ℓ‖_*²/‖A_ℓ‖_F²; coi = CoI(A_ℓ); coi_bound; coi_residual (module
    docstring); then the step into ℓ (NaN at ℓ = 0): jump = ‖A_ℓ − A_{ℓ-1}‖_F/‖A_ℓ‖_F;
    kinetic, potential, hamiltonian, lagrangian at A_{ℓ-1}; weight_cost = c·‖W̃_ℓ‖_F² (≥
    lagrangian); neg2h = −(2/L̃)·hamiltonian (NaN at L̃ = 0).
    ``network``, one row per member: effective_depth; hamiltonian (mean over ℓ = 1..L);
    hamiltonian_spread = (max − min)/|mean| over ℓ = 1..L; neg2h = −(2/L̃)·hamiltonian;
    bottleneck_rank = the smallest rank over ℓ = 1..L−1 (the interior layers; over ℓ = 1..L for
    L = 1); k_star (given, else NaN); max_jump_ratio = max/min jump over ℓ = 1..L;
    param_norm_sq = R(θ); lagrangian_sum = Σ_ℓ ρ_ℓ ℒ_ℓ (≤ R(θ)).
    """
    ref = model.reference
    net = type(model).from_tensors({k: v.detach().to(MEASURE_DTYPE) for k, v in model.tensors().items()}, model.metadata())
    net = net.to(ref.device)
    x = torch.as_tensor(x).to(device=ref.device, dtype=MEASURE_DTYPE)
    E, L, lt, c = net.members, net.depth, net.effective_depth, net.norm_factor()
    rho = net.steps
    with torch.no_grad():
        reps = torch.stack(net.representations(x), 1)  # (E, L + 1, N, w)
        m, s_pinv = identity_map(reps, rtol)
        coi = m.square().sum((-2, -1))
        s_tilde = sigma_tilde(reps)
        projected = s_tilde @ m
        residual = torch.linalg.vector_norm(projected - reps, dim=(-2, -1)) / torch.linalg.vector_norm(reps, dim=(-2, -1))
        bound = torch.linalg.svdvals(projected).sum(-1).square() / s_tilde.square().sum((-2, -1))
        spectra = torch.linalg.svdvals(reps)  # (E, L + 1, min(N, w))
        rank = relative_rank(spectra, threshold)
        ratio = spectra.sum(-1).square() / spectra.square().sum(-1)
        diff = reps[:, 1:] - reps[:, :-1]
        jump = torch.linalg.vector_norm(diff, dim=(-2, -1)) / torch.linalg.vector_norm(reps[:, 1:], dim=(-2, -1))
        velocity = diff / rho.view(1, L, 1, 1)
        vel_map = s_pinv[:, :-1] @ velocity  # (Ȧ σ̃(A_{ℓ-1})⁺)ᵀ
        kinetic = c * vel_map.square().sum((-2, -1))
        potential = c * lt**2 * coi[:, :-1]
        hamiltonian = kinetic - potential
        lagrangian = c * (vel_map + lt * m[:, :-1]).square().sum((-2, -1))
        weight_cost = c * torch.stack([w.square().sum((1, 2)) + b.square().sum(1) for w, b in zip(net.weights, net.biases)], 1)
        neg2h = -2 / lt * hamiltonian if lt > 0 else torch.full_like(hamiltonian, float("nan"))
        norm_sq = net.param_norm_sq()

    nan_col = torch.full((E, 1), float("nan"), dtype=MEASURE_DTYPE, device=ref.device)
    step = lambda t: _np(torch.cat([nan_col, t], 1)).ravel()  # noqa: E731
    p = torch.cat([rho.new_zeros(1), torch.cumsum(rho, 0)])
    layers = pd.DataFrame({
        "member": np.repeat(np.arange(E), L + 1),
        "layer": np.tile(np.arange(L + 1), E),
        "p": np.tile(_np(p), E),
        "rho": np.tile(np.concatenate([[np.nan], _np(rho)]), E),
        "singular_values": [row for row in _np(spectra).reshape(E * (L + 1), -1)],
        "rank": _np(rank).ravel(),
        "nuclear_ratio": _np(ratio).ravel(),
        "coi": _np(coi).ravel(),
        "coi_bound": _np(bound).ravel(),
        "coi_residual": _np(residual).ravel(),
        "jump": step(jump),
        "kinetic": step(kinetic),
        "potential": step(potential),
        "hamiltonian": step(hamiltonian),
        "lagrangian": step(lagrangian),
        "weight_cost": step(weight_cost),
        "neg2h": step(neg2h),
    })
    h_mean = hamiltonian.mean(1)
    interior = rank[:, 1:L] if L > 1 else rank[:, 1:]
    network = pd.DataFrame({
        "member": np.arange(E),
        "effective_depth": lt,
        "hamiltonian": _np(h_mean),
        "hamiltonian_spread": _np((hamiltonian.max(1).values - hamiltonian.min(1).values) / h_mean.abs()),
        "neg2h": _np(-2 / lt * h_mean) if lt > 0 else np.full(E, np.nan),
        "bottleneck_rank": _np(interior.min(1).values),
        "k_star": float(k_star) if k_star is not None else np.nan,
        "max_jump_ratio": _np(jump.max(1).values / jump.min(1).values),
        "param_norm_sq": _np(norm_sq),
        "lagrangian_sum": _np((lagrangian * rho).sum(1)),
    })
    return {"layers": layers, "network": network}


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
