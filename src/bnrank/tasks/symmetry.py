"""The symmetry-learning task of docs/theory.md §5 (the paper's Figure 2).

Inputs x ∈ R³. A potential V invariant under rotations about a unit axis w,

    V(x) = ¼ (‖x‖² − 1)² + ½ κ (wᵀx)²,

pulls points onto the unit sphere (the ring term) and, more slowly when κ < 2, towards the equator
wᵀx = 0. Gradient descent x_{t+1} = x_t − η ∇V(x_t), started at x_0 = x, gives a path x_0..x_T.
The target is the vector of the path's rotation invariants

    y(x) = (h_1, r_1, h_2, r_2, ..., h_T, r_T) ∈ R^{2T},   h_t = wᵀx_t,  r_t = ‖x_t − h_t w‖,

standardized per coordinate with the training set's mean and std.

Why these targets (ours): rotations R about w commute with gradient descent on V (∇V(Rx) = R∇V(x)),
so y(Rx) = y(x) exactly and y factors through the 2-d quotient R³/G ≅ {(h, r): r ≥ 0}; its
bottleneck rank is 2. Both quotient coordinates appear in the targets with equal weight after
standardization, so the rank is plainly 2; the other option of docs/theory.md §5, the values V(x_t), sees
the second coordinate only through how V changes along the path, and can be nearly rank 1.
r = ‖P⊥x‖ is positively homogeneous, which a ReLU network represents cheaply (r² would be
quadratic).

Inputs are not standardized: a per-coordinate rescaling would break the rotation symmetry. They
are drawn uniform in the ball of radius `scale` ("ball") or N(0, scale² I) ("gaussian").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bnrank.errors import DataError
from bnrank.tasks.base import TaskData

TRUE_RANK = 2


@dataclass(frozen=True)
class RotationDynamics:
    """Gradient descent on the rotation-invariant potential V of this module (float64).

    `axis` (3,) is the unit rotation axis w; `kappa` the equator pull κ; `step` the GD step η;
    `path_length` the number T of GD steps a target follows. Points are tensors (..., 3).
    """

    axis: Tensor
    kappa: float
    step: float
    path_length: int

    @classmethod
    def from_config(cls, cfg) -> "RotationDynamics":
        """The dynamics of a `SymmetryTask` config (its axis is normalized here as well)."""
        axis = torch.tensor(cfg.axis, dtype=torch.float64)
        return cls(axis / axis.norm(), cfg.kappa, cfg.step, cfg.path_length)

    def invariants(self, x: Tensor) -> Tensor:
        """(h, r) = (wᵀx, ‖x − (wᵀx) w‖): (..., 3) → (..., 2)."""
        h = x @ self.axis
        r = (x - h.unsqueeze(-1) * self.axis).norm(dim=-1)
        return torch.stack([h, r], dim=-1)

    def potential(self, x: Tensor) -> Tensor:
        """V(x) = ¼ (‖x‖² − 1)² + ½ κ (wᵀx)²: (..., 3) → (...)."""
        return 0.25 * (x.square().sum(-1) - 1).square() + 0.5 * self.kappa * (x @ self.axis).square()

    def gradient(self, x: Tensor) -> Tensor:
        """∇V(x) = (‖x‖² − 1) x + κ (wᵀx) w: (..., 3) → (..., 3)."""
        radial = (x.square().sum(-1, keepdim=True) - 1) * x
        return radial + self.kappa * (x @ self.axis).unsqueeze(-1) * self.axis

    def path(self, x: Tensor) -> Tensor:
        """The GD path x_0 = x, ..., x_T: (..., 3) → (..., T + 1, 3)."""
        points = [x]
        for _ in range(self.path_length):
            points.append(points[-1] - self.step * self.gradient(points[-1]))
        return torch.stack(points, dim=-2)

    def targets(self, x: Tensor) -> Tensor:
        """Unstandardized targets (h_1, r_1, ..., h_T, r_T): (..., 3) → (..., 2T)."""
        return self.path_targets(self.path(x))

    def path_targets(self, paths: Tensor) -> Tensor:
        """Unstandardized targets of given paths: (..., T + 1, 3) → (..., 2T)."""
        return self.invariants(paths[..., 1:, :]).flatten(-2)

    def plane_basis(self) -> Tensor:
        """(2, 3): an orthonormal basis (u, v) of the plane w⊥, with (u, v, w) right-handed."""
        seed = torch.zeros(3, dtype=torch.float64)
        seed[int(self.axis.abs().argmin())] = 1.0
        u = seed - (seed @ self.axis) * self.axis
        u = u / u.norm()
        return torch.stack([u, torch.linalg.cross(self.axis, u)])

    def orbit(self, x: Tensor, angles: Tensor) -> Tensor:
        """x rotated about w by each angle (radians, right-hand rule).

        x (..., 3); angles (K,) shared by all points or (..., K) per point → (..., K, 3).
        """
        angles = torch.as_tensor(angles, dtype=x.dtype)
        h = (x @ self.axis).unsqueeze(-1)
        perp = (x - h * self.axis).unsqueeze(-2)
        turned = torch.linalg.cross(self.axis.expand_as(x), x).unsqueeze(-2)
        cos, sin = angles.cos().unsqueeze(-1), angles.sin().unsqueeze(-1)
        return (h * self.axis).unsqueeze(-2) + cos * perp + sin * turned

    def plane_grid(self, n: int, extent: float, offset: float = 0.0) -> tuple[Tensor, Tensor]:
        """A square n × n grid on the plane {x : wᵀx = offset}.

        Returns (points (n, n, 3), coords (n,)): points[i, j] = offset·w + coords[j]·u +
        coords[i]·v with (u, v) = `plane_basis()` and coords = linspace(−extent, extent, n), so
        ``plt.imshow(values, origin="lower", extent=(-extent, extent, -extent, extent))`` draws
        values computed on the grid in the (u, v) frame.
        """
        coords = torch.linspace(-extent, extent, n, dtype=torch.float64)
        u, v = self.plane_basis()
        points = offset * self.axis + coords.view(1, n, 1) * u + coords.view(n, 1, 1) * v
        return points, coords


def sample_inputs(cfg, n: int, gen: torch.Generator) -> Tensor:
    """n inputs (n, 3) from the config's distribution: uniform in the ball of radius `scale`, or
    N(0, scale² I)."""
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    if cfg.distribution == "gaussian":
        return cfg.scale * z
    radius = cfg.scale * torch.rand(n, 1, generator=gen, dtype=torch.float64) ** (1 / 3)
    return radius * z / z.norm(dim=1, keepdim=True)


def symmetry_task(cfg) -> TaskData:
    """Generate the task a `SymmetryTask` config describes (deterministic in cfg.seed).

    A GD step multiplies wᵀx by 1 − η(‖x‖² − 1 + κ) and P⊥x by 1 − η(‖x‖² − 1). Raises DataError
    when the first factor is ≤ 0 anywhere on a path (the step overshoots across the plane
    wᵀx = 0, and, for larger ‖x‖, across the axis): then the targets stop being smooth functions
    of the invariants (h_0, r_0) and soon diverge. Lower `step` or `scale`.
    """
    dynamics = RotationDynamics.from_config(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = sample_inputs(cfg, cfg.n_train + cfg.n_test, gen)
    paths = dynamics.path(x)
    factor = 1 - cfg.step * (paths[:, :-1].square().sum(-1) - 1 + cfg.kappa)
    if not torch.isfinite(paths).all() or (factor <= 0).any():
        raise DataError(
            f"symmetry task: gradient descent with step {cfg.step} overshoots on inputs of scale "
            f"{cfg.scale} (it needs step·(‖x‖² − 1 + kappa) < 1 along every path); lower task.step or task.scale"
        )
    y = dynamics.path_targets(paths)
    y_train, y_test = y[: cfg.n_train], y[cfg.n_train :]
    mean, std = y_train.mean(0), y_train.std(0).clamp_min(1e-12)
    meta = {
        "kind": "symmetry", "true_rank": TRUE_RANK, "axis": dynamics.axis.tolist(),
        "target_mean": mean.tolist(), "target_std": std.tolist(),
    }
    return TaskData(x[: cfg.n_train], (y_train - mean) / std, x[cfg.n_train :], (y_test - mean) / std, meta)

