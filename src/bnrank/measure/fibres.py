"""Fibre collapse: how much a representation φ(x) forgets the directions along which g(x) stays put.

For a target f* = h∘g, the fibres of g are the sets {x : g(x) = c}; a network that has learned
g in its bottleneck maps each fibre to (nearly) one point there. Measured on pairs of inputs:

    ratio_ij = (‖φ_i − φ_j‖ / mean_pairs ‖φ_a − φ_b‖) / (‖x_i − x_j‖ / mean_pairs ‖x_a − x_b‖),

the pair's distance in the representation against its distance in the input, each in units of
its mean over all pairs. The *along-fibre* pairs are the `near_fraction` of pairs with the
smallest ‖g_i − g_j‖ / ‖x_i − x_j‖ (x moved, g did not). Then

    fibre_collapse = mean(ratio over along-fibre pairs) / mean(ratio over all pairs).

φ(x) = x (no collapse) gives exactly 1; any φ that is a function of g alone gives ratio 0 on
pairs with g_i = g_j; φ = g itself gives `fibre_collapse(g, g, x)`, the reference value of a
perfect bottleneck for those points (small but > 0 when no pair has exactly g_i = g_j). The
value is invariant to scaling φ and to isometries of φ-space. Pairs with x_i = x_j are dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnrank.errors import DataError


def _pair_distances(a: Tensor) -> Tensor:
    """‖a_i − a_j‖ for i < j: (..., n, p) → (..., n(n−1)/2), pairs in torch.triu_indices order."""
    n = a.shape[-2]
    i, j = torch.triu_indices(n, n, offset=1, device=a.device)
    return (a[..., i, :] - a[..., j, :]).norm(dim=-1)


def along_fibre_pairs(g: Tensor, x: Tensor, near_fraction: float) -> tuple[Tensor, Tensor]:
    """(mask of the along-fibre pairs, mask of the pairs used) over the pairs i < j of the
    n points: g (n, k), x (n, d); pairs with x_i = x_j are not used."""
    dx, dg = _pair_distances(x), _pair_distances(g)
    used = dx > 0
    if int(used.sum()) < 2:
        raise DataError("fibre collapse: needs at least 2 pairs of distinct inputs")
    count = max(1, round(near_fraction * int(used.sum())))
    score = torch.where(used, dg / torch.where(used, dx, 1.0), float("inf"))
    near = torch.zeros_like(used)
    near[torch.argsort(score, stable=True)[:count]] = True
    return near, used


def fibre_collapse(rep: Tensor, g: Tensor, x: Tensor, near_fraction: float = 0.02) -> Tensor:
    """The fibre collapse (module docstring) of representations `rep` (n, p) or (E, n, p)
    (one per member) of the inputs x (n, d) with inner-function values g (n, k); float64.
    Returns a scalar tensor or (E,). A representation constant over the points is NaN."""
    if not 0 < near_fraction <= 1:
        raise DataError(f"fibre collapse: near_fraction must be in (0, 1], got {near_fraction}")
    x, g, rep = x.double(), g.double(), rep.double()
    if x.dim() != 2 or g.dim() != 2 or rep.dim() not in (2, 3) or not (x.shape[0] == g.shape[0] == rep.shape[-2]):
        raise DataError(f"fibre collapse: need x (n, d), g (n, k), rep (n, p) or (E, n, p) with one n, got "
                        f"{tuple(x.shape)}, {tuple(g.shape)}, {tuple(rep.shape)}")
    near, used = along_fibre_pairs(g, x, near_fraction)
    dx = _pair_distances(x)[used]
    dx = dx / dx.mean()
    drep = _pair_distances(rep)[..., used]
    ratio = drep / drep.mean(-1, keepdim=True) / dx
    return ratio[..., near[used]].mean(-1) / ratio.mean(-1)
