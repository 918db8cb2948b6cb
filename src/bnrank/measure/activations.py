"""Hidden representations (docs/theory.md §4): their spectra, effective ranks, nonlinearity impact.

The representations of N inputs X at layer ℓ are the matrices α_ℓ(X) (pre-activation) and
σ(α_ℓ(X)) (post-activation, the input of layer ℓ+1), each (E, N, d_ℓ), uncentered. The output
layer ℓ = L has no σ: its "post-activation" is the output α_L(X) itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def layer_inputs(x: Tensor, preacts: Sequence[Tensor]) -> list[Tensor]:
    """The input of every layer: [x, σ(α_1), ..., σ(α_{L-1})], x (N, d_0) broadcast to (E, N, d_0)."""
    first = x.expand(preacts[0].shape[0], *x.shape)
    return [first] + [torch.relu(a) for a in preacts[:-1]]


def post_activations(preacts: Sequence[Tensor]) -> list[Tensor]:
    """[σ(α_1), ..., σ(α_{L-1}), α_L]: the representation after each layer, each (E, N, d_ℓ)."""
    return [torch.relu(a) for a in preacts[:-1]] + [preacts[-1]]


def spectra(mats: Sequence[Tensor]) -> list[Tensor]:
    """Singular values of each (E, N, d) matrix, descending: list of (E, min(N, d))."""
    return [torch.linalg.svdvals(m) for m in mats]


def relative_rank(spectrum: Tensor, threshold: float) -> Tensor:
    """# singular values > threshold × the largest: (..., m) descending → (...,) int64 (0 for a zero matrix)."""
    return (spectrum > threshold * spectrum[..., :1]).sum(-1)


def nonlinearity_impact(preacts: Sequence[Tensor]) -> Tensor:
    """‖σ(α_ℓ) − α_ℓ‖_F / ‖α_ℓ‖_F over the N inputs, for ℓ = 1..L: (E, L).

    ≈ 0 where a layer acts linearly on the data (bottleneck layers); NaN for the output layer
    ℓ = L (no σ there) and for a layer whose pre-activations are all zero.
    """
    cols = []
    for a in preacts[:-1]:
        # σ(a) − a = −min(a, 0)
        cols.append(torch.linalg.vector_norm(a.clamp(max=0), dim=(1, 2)) / torch.linalg.vector_norm(a, dim=(1, 2)))
    last = torch.full_like(preacts[-1][:, 0, 0], float("nan"))
    return torch.stack(cols + [last], dim=1)
