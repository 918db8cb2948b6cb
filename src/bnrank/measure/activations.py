"""Hidden representations (docs/theory.md §4): their spectra, effective ranks, nonlinearity impact.

The representations of N inputs X at layer ℓ are the matrices α_ℓ(X) (pre-activation) and
σ(α_ℓ(X)) (post-activation, the input of layer ℓ+1), each (E, N, d_ℓ), uncentered. The output
layer ℓ = L has no σ: its "post-activation" is the output α_L(X) itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def spectra(mats: Sequence[Tensor]) -> list[Tensor]:
    """Singular values of each (E, N, d) matrix, descending: list of (E, min(N, d))."""
    return [torch.linalg.svdvals(m) for m in mats]


def relative_rank(spectrum: Tensor, threshold: float) -> Tensor:
    """# singular values > threshold × the largest: (..., m) descending → (...,) int64 (0 for a zero matrix)."""
    return (spectrum > threshold * spectrum[..., :1]).sum(-1)


def nonlinearity_impact(sites: Sequence) -> Tensor:
    """‖σ(α) − α‖_F / ‖α‖_F over the N inputs at every site (bnrank.models.Site, pre α and post
    σ(α)): (E, n_sites).

    ≈ 0 where a layer acts linearly on the data (bottleneck layers; exactly 0 in a linear net);
    NaN where no activation follows (the output) and at a site whose pre-activations are all zero.
    """
    cols = []
    for site in sites:
        if site.nonlinear:
            cols.append(torch.linalg.vector_norm(site.post - site.pre, dim=(1, 2)) / torch.linalg.vector_norm(site.pre, dim=(1, 2)))
        else:
            cols.append(torch.full_like(site.pre[:, 0, 0], float("nan")))
    return torch.stack(cols, dim=1)
