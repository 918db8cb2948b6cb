"""Symmetry measurements: orbit collapse of representations, crossings of 2-d curves.

Both work on any model and any symmetry group: the model enters as a function returning its
representations, the group as a function returning points of a point's orbit.

>>> import torch
>>> from bnrank.models import EnsembleMLP
>>> net = EnsembleMLP.init(members=2, dims=[3, 50, 50, 2])
>>> def rotate_z(x, k, generator):       # orbits of rotations about e_3
...     t = 2 * torch.pi * torch.rand(x.shape[0], k, generator=generator, dtype=x.dtype)
...     c, s = t.cos(), t.sin()
...     x0, x1, x2 = (x[:, i : i + 1] for i in range(3))
...     return torch.stack([c * x0 - s * x1, s * x0 + c * x1, x2.expand_as(c)], dim=-1)
>>> ratio = orbit_collapse(net.preactivations, torch.randn(64, 3), rotate_z, n_orbit=4)
>>> ratio.shape                           # (layers, members)
torch.Size([3, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from bnrank.errors import DataError

OrbitFn = Callable[[Tensor, int, torch.Generator], Tensor]


def orbit_collapse(
    representation_fn: Callable[[Tensor], Sequence[Tensor]],
    x: Tensor,
    orbit_fn: OrbitFn,
    n_orbit: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """How much each representation collapses the orbits of a group: 0 = invariant, ≈ 1 = blind.

    For N base points x (N, d_in), ``orbit_fn(x, n_orbit, generator)`` returns (N, n_orbit, d_in):
    n_orbit points of each x's orbit (e.g. x moved by random group elements). These N·n_orbit
    points go through ``representation_fn``, which returns a sequence of representations (one
    per layer), each (..., N·n_orbit, d_ℓ) with any leading axes (e.g. ensemble members E), as
    `EnsembleMLP.preactivations` does. For every layer the ratio is

        mean ‖φ(p) − φ(q)‖ over pairs p ≠ q on the same orbit
        ─────────────────────────────────────────────────────────
        mean ‖φ(p) − φ(q)‖ over pairs p, q on different orbits,

    Euclidean distances in float64. The base points should be drawn from the input distribution,
    so the denominator is the typical distance between representations of unrelated inputs.

    Returns float64 (n_layers, ...) with the leading axes of the representations; a layer whose
    representation is constant gives NaN (0 / 0).
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise DataError(f"orbit_collapse needs at least 2 base points x of shape (N, d), got {tuple(x.shape)}")
    if n_orbit < 2:
        raise DataError(f"orbit_collapse needs n_orbit >= 2 points per orbit, got {n_orbit}")
    points = orbit_fn(x, n_orbit, generator if generator is not None else torch.Generator().manual_seed(0))
    n = x.shape[0]
    if points.shape != (n, n_orbit, x.shape[1]):
        raise DataError(f"orbit_fn returned shape {tuple(points.shape)}, expected {(n, n_orbit, x.shape[1])}")
    orbit_id = torch.arange(n).repeat_interleave(n_orbit)
    different = orbit_id[:, None] != orbit_id[None, :]
    pair = torch.triu_indices(n_orbit, n_orbit, offset=1)
    with torch.no_grad():
        reps = representation_fn(points.reshape(n * n_orbit, -1))
        ratios = []
        for rep in reps:
            rep = rep.detach().to(torch.float64)
            # Within an orbit, distances are differences taken exactly (cdist's matmul shortcut
            # loses ~1e-8 to cancellation, which is what an invariant representation should give).
            orbits = rep.unflatten(-2, (n, n_orbit))
            within = (orbits[..., pair[0], :] - orbits[..., pair[1], :]).norm(dim=-1).mean((-2, -1))
            between = torch.cdist(rep, rep)[..., different].mean(-1)
            ratios.append(within / between)
    return torch.stack(ratios)


def count_crossings(curves: Sequence[np.ndarray | Tensor], block: int = 4096) -> int:
    """Number of proper crossings between 2-d polylines, counted over pairs of different curves.

    `curves` is a sequence of (n_i, 2) arrays (n_i ≥ 2), each a polyline through its points. Two
    segments, from different curves, cross when each one's endpoints lie strictly on opposite
    sides of the other's supporting line (exact float64 orientation tests). Hence touching does
    not count: an endpoint lying on the other segment, a shared endpoint, or collinear overlap
    give 0; so does a curve passing exactly through a vertex of another (a measure-zero event
    for generic float data). Self-crossings of a curve are not counted. Each crossing segment
    pair counts once.

    Vectorized over segment pairs in blocks of `block` rows (memory O(block · #segments)).
    """
    starts, ends, owner = [], [], []
    for i, curve in enumerate(curves):
        c = np.asarray(curve.detach().cpu() if isinstance(curve, Tensor) else curve, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] < 2:
            raise DataError(f"curve {i}: expected an (n, 2) array with n >= 2 points, got shape {c.shape}")
        starts.append(c[:-1])
        ends.append(c[1:])
        owner.append(np.full(len(c) - 1, i))
    if not starts:
        return 0
    a, b, owner = np.concatenate(starts), np.concatenate(ends), np.concatenate(owner)

    def orient(p, q, r):
        """Sign of the cross product (q − p) × (r − p), broadcast."""
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    total = 0
    for lo in range(0, len(a), block):
        p, q, who = a[lo : lo + block, None], b[lo : lo + block, None], owner[lo : lo + block, None]
        straddle_1 = orient(p, q, a[None]) * orient(p, q, b[None]) < 0
        straddle_2 = orient(a[None], b[None], p) * orient(a[None], b[None], q) < 0
        total += int((straddle_1 & straddle_2 & (who < owner[None])).sum())
    return total
