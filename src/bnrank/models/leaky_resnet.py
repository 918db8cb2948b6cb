"""EnsembleLeakyResNet: E Leaky ResNets of one shape, run as one (model.kind "leaky-resnet").

Network (Jacot & Kaiser 2024, docs/theory.md §6), width w, L layers at positions p_ℓ = ρ_1 + ... + ρ_ℓ:

    α_{p_0} = (x, 0) ∈ R^w                                         (x zero-padded: d_in ≤ w)
    α_{p_ℓ} = (1 − ρ_ℓ L̃) α_{p_{ℓ-1}} + ρ_ℓ W̃_ℓ σ̃(α_{p_{ℓ-1}}),   σ̃(z) = (ReLU(z), 1)
    f(x)    = the first d_out coordinates of α_{p_L}                 (d_out ≤ w)

with steps ρ_ℓ > 0 summing to 1 and effective depth L̃ ≥ 0 (L̃ = 0 a ResNet; with ρ_ℓ = 1/L and
L̃ = L the net is an MLP with weights W̃_ℓ/L). W̃_ℓ = (W_ℓ, b_ℓ) is stored as its weight part
``weights[ℓ-1]`` (E, w, w) and its last column ``biases[ℓ-1]`` (E, w), so W̃_ℓ σ̃(z) = W_ℓ ReLU(z) + b_ℓ.

Regularizer (the paper's λ/(2L̃) Σ ρ_ℓ ‖W̃_ℓ‖², written as C = fit + λ·R(θ)):

    R(θ) = c · Σ_ℓ ρ_ℓ (‖W_ℓ‖_F² + ‖b_ℓ‖²),   c = 1/(2L̃) for L̃ > 0 and c = 1/2 at L̃ = 0,

so train.lam is the paper's λ. At L̃ = 0 the factor 1/L̃ is undefined; it only rescales λ there.

ρ and L̃ belong to the architecture: all members share them (a checkpoint's metadata holds them).
train.adaptive_steps re-balances ρ during training (`adapt_steps_`) from the members' pooled
jumps, so with it the members of one ensemble are coupled through ρ (a member frozen by the
stop rule keeps its parameters, not its steps): train one member per ensemble for independent
results.
The gradient has a hand-written batched fast path, equal to the generic torch.func one
(tests/test_leaky_resnet.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnrank.errors import ConfigError, ModelError
from bnrank.models.family import LAYER_STEPS, EnsembleModel, LayerKey, Site

STEP_SUM_TOL = 1e-6
"""Steps ρ_ℓ are accepted when |Σ_ℓ ρ_ℓ − 1| ≤ STEP_SUM_TOL; they are then divided by their sum."""


def check_steps(steps: Sequence[float], depth: int) -> list[float]:
    """`steps` validated (depth values, each > 0 and finite, summing to 1 within STEP_SUM_TOL) and
    normalized to sum exactly 1; else ValueError with one line."""
    steps = [float(s) for s in steps]
    if len(steps) != depth:
        raise ValueError(f"steps has {len(steps)} values but depth = {depth}")
    if not all(math.isfinite(s) and s > 0 for s in steps):
        raise ValueError(f"steps must all be > 0 and finite, got {steps}")
    total = math.fsum(steps)
    if abs(total - 1) > STEP_SUM_TOL:
        raise ValueError(f"steps must sum to 1 (within {STEP_SUM_TOL:g}), they sum to {total:.10g}")
    return [s / total for s in steps]


def norm_factor(effective_depth: float) -> float:
    """c of R(θ) = c·Σ ρ_ℓ‖W̃_ℓ‖²: 1/(2L̃), or 1/2 at L̃ = 0."""
    return 0.5 / effective_depth if effective_depth > 0 else 0.5


class EnsembleLeakyResNet(EnsembleModel):
    """E Leaky ResNets of width w = weights[0].shape[1] with `depth` = len(weights) layers."""

    kind = "leaky-resnet"
    capabilities = frozenset({LAYER_STEPS})  # not positively homogeneous (the skip path), no layered product

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor], d_in: int, d_out: int,
                 effective_depth: float, steps: Sequence[float] | None = None):
        super().__init__()
        if len(weights) == 0 or len(weights) != len(biases):
            raise ModelError("a leaky ResNet needs at least one layer and one bias vector per weight matrix")
        members, width = weights[0].shape[0], weights[0].shape[1]
        for i, (w, b) in enumerate(zip(weights, biases)):
            if w.shape != (members, width, width) or b.shape != (members, width):
                raise ModelError(f"layer {i + 1}: weight {tuple(w.shape)} and bias {tuple(b.shape)} are not "
                                 f"({members}, {width}, {width}) and ({members}, {width})")
        if not (math.isfinite(effective_depth) and effective_depth >= 0):
            raise ModelError(f"effective depth L̃ must be finite and >= 0, got {effective_depth}")
        if max(d_in, d_out) > width:
            raise ModelError(f"width {width} does not fit the residual stream: it must be >= d_in ({d_in}) and d_out ({d_out})")
        try:
            rho = check_steps(steps if steps is not None else [1.0 / len(weights)] * len(weights), len(weights))
        except ValueError as err:
            raise ModelError(str(err)) from None
        self.weights = nn.ParameterList(nn.Parameter(w) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b) for b in biases)
        self.effective_depth = float(effective_depth)
        self._d_in, self._d_out = int(d_in), int(d_out)
        self.register_buffer("steps", torch.tensor(rho, dtype=weights[0].dtype, device=weights[0].device))

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def init(cls, members: int, d_in: int, d_out: int, width: int, depth: int, effective_depth: float,
             steps: Sequence[float] | None = None, seeds: Sequence[int] | None = None,
             init_scale: float | Sequence[float] = 1.0, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu") -> "EnsembleLeakyResNet":
        """W_ℓ ~ N(0, s²·g_ℓ·2/w) with g_ℓ = max(1 + 2L̃/ρ_ℓ − L̃², 1), b_ℓ = 0: a layer then
        multiplies the representation's expected squared norm by 1 + ρ_ℓ² (for ρ_ℓ L̃ ≤ 2), so
        f keeps the input's scale for any L̃. Member e draws from seed ``seeds[e]`` alone."""
        seeds = list(range(members)) if seeds is None else list(seeds)
        scales = [float(init_scale)] * members if isinstance(init_scale, (int, float)) else list(init_scale)
        if len(seeds) != members or len(scales) != members:
            raise ModelError(f"need {members} seeds and init scales, got {len(seeds)} and {len(scales)}")
        rho = [1.0 / depth] * depth if steps is None else list(steps)
        weights = [torch.empty(members, width, width, dtype=torch.float64) for _ in range(depth)]
        for e, (seed, scale) in enumerate(zip(seeds, scales)):
            gen = torch.Generator().manual_seed(int(seed))
            for w, r in zip(weights, rho):
                gain = max(1 + 2 * effective_depth / r - effective_depth**2, 1.0)
                w[e] = torch.randn(width, width, generator=gen, dtype=torch.float64) * scale * (2 * gain / width) ** 0.5
        biases = [torch.zeros(members, width, dtype=torch.float64) for _ in range(depth)]
        to = dict(dtype=dtype, device=device)
        return cls([w.to(**to) for w in weights], [b.to(**to) for b in biases], d_in, d_out, effective_depth, rho)

    @classmethod
    def from_config(cls, config, d_in: int, d_out: int, seeds: Sequence[int], init_scale: Sequence[float],
                    dtype: torch.dtype, device) -> "EnsembleLeakyResNet":
        """`config` is a bnrank.config.LeakyResNetConfig; a width below d_in or d_out is a ConfigError."""
        if max(d_in, d_out) > config.width:
            raise ConfigError(f"model.width ({config.width}) must be >= the task's d_in ({d_in}) and d_out ({d_out}): "
                              "a leaky ResNet carries inputs and outputs in its width-w residual stream")
        steps = None if config.steps == "uniform" else config.steps
        return cls.init(len(seeds), d_in, d_out, config.width, config.depth, config.effective_depth, steps,
                        seeds=seeds, init_scale=list(init_scale), dtype=dtype, device=device)

    def tensors(self) -> dict[str, Tensor]:
        """``weight.{ℓ}`` (E, w, w) and ``bias.{ℓ}`` (E, w), ℓ = 1..L."""
        out = {f"weight.{i}": w for i, w in enumerate(self.weights, start=1)}
        return out | {f"bias.{i}": b for i, b in enumerate(self.biases, start=1)}

    def metadata(self) -> dict[str, str]:
        """d_in, d_out, L̃ and the steps ρ (JSON floats, exact round trip)."""
        return {"d_in": str(self._d_in), "d_out": str(self._d_out), "effective_depth": repr(self.effective_depth),
                "steps": json.dumps(self.steps.double().cpu().tolist())}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metadata: dict[str, str]) -> "EnsembleLeakyResNet":
        depth = max(int(k.split(".")[1]) for k in tensors if k.startswith("weight."))
        weights = [tensors[f"weight.{i}"] for i in range(1, depth + 1)]
        biases = [tensors[f"bias.{i}"] for i in range(1, depth + 1)]
        return cls(weights, biases, int(metadata["d_in"]), int(metadata["d_out"]), float(metadata["effective_depth"]),
                   json.loads(metadata["steps"]))

    # -- shape ----------------------------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return self._d_in

    @property
    def d_out(self) -> int:
        return self._d_out

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def width(self) -> int:
        return self.weights[0].shape[1]

    def describe(self) -> str:
        return f"leaky-resnet (L̃ = {self.effective_depth:g})"

    def norm_factor(self) -> float:
        return norm_factor(self.effective_depth)

    # -- evaluation -----------------------------------------------------------------------------

    def embed(self, x: Tensor) -> Tensor:
        """α_{p_0} = (x, 0): (..., N, d_in) → (..., N, w)."""
        return torch.nn.functional.pad(x, (0, self.width - self.d_in))

    def representations(self, x: Tensor) -> list[Tensor]:
        """[α_{p_0}(X), ..., α_{p_L}(X)] of every member, each (E, N, w); x (N, d_in) or (E, N, d_in)."""
        self.check_input(x)
        h = self.embed(x if x.dim() == 3 else x.expand(self.members, *x.shape))
        keep = 1 - self.steps * self.effective_depth
        out = [h]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            move = torch.baddbmm(b.unsqueeze(1), torch.relu(h), w.transpose(1, 2))
            h = h * keep[i] + move * self.steps[i]
            out.append(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.representations(x)[-1][..., : self.d_out]

    def member_forward(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        depth = self.depth
        h = self.embed(x)
        keep = 1 - self.steps * self.effective_depth
        for i, (w, b) in enumerate(zip(params[:depth], params[depth:])):
            h = h * keep[i] + (torch.relu(h) @ w.T + b) * self.steps[i]
        return h[..., : self.d_out]

    def member_param_norm_sq(self, params: Sequence[Tensor]) -> Tensor:
        depth = self.depth
        sq = torch.stack([w.square().sum() + b.square().sum() for w, b in zip(params[:depth], params[depth:])])
        return self.norm_factor() * (self.steps * sq).sum()

    def param_norm_sq(self) -> Tensor:
        """R(θ) = c·Σ_ℓ ρ_ℓ(‖W_ℓ‖² + ‖b_ℓ‖²) per member: (E,)."""
        sq = torch.stack([w.square().sum((1, 2)) + b.square().sum(1) for w, b in zip(self.weights, self.biases)], 1)
        return self.norm_factor() * (sq * self.steps).sum(1)

    def objective_and_grads(self, x, y, lam, workspace=None, reduction="sum", flat=None):
        """Hand-written batched backprop through the residual stream (equal to the generic path).

        Backward: δ_L = dC/dα_{p_L} (the output's error padded to w); dW_ℓ = ρ_ℓ δ_ℓᵀ ReLU(α_{p_{ℓ-1}}),
        db_ℓ = ρ_ℓ Σ_n δ_ℓ; δ_{ℓ-1} = (1 − ρ_ℓ L̃) δ_ℓ + ρ_ℓ (δ_ℓ W_ℓ) ⊙ 1[α_{p_{ℓ-1}} > 0]."""
        from bnrank.training.objective import mse_scale

        depth, c = self.depth, self.norm_factor()
        with torch.no_grad():
            reps = self.representations(x)
            out = reps[-1][..., : self.d_out]
            residual = out - y
            scale = mse_scale(reduction, residual.shape[-1])
            n = residual.shape[-2]
            err = residual.square().sum(-1).mean(-1) * scale
            norm_sq = self.param_norm_sq()
            objective = err + lam * norm_sq
            delta = torch.nn.functional.pad(residual * (2.0 * scale / n), (0, self.width - self.d_out))
            keep = 1 - self.steps * self.effective_depth
            reg = 2 * c * lam
            grad_w: list[Tensor] = [None] * depth  # type: ignore[list-item]
            grad_b: list[Tensor] = [None] * depth  # type: ignore[list-item]
            for i in reversed(range(depth)):
                w, b, below, rho = self.weights[i], self.biases[i], reps[i], self.steps[i]
                act = torch.relu(below)
                gw = torch.bmm(delta.transpose(1, 2), act).mul_(rho).addcmul_(w, (reg * rho).view(-1, 1, 1))
                gb = delta.sum(1).mul_(rho).addcmul_(b, (reg * rho).view(-1, 1))
                grad_w[i], grad_b[i] = gw, gb
                if i > 0:
                    back = torch.bmm(delta, w) * (below > 0)
                    delta = delta * keep[i] + back * rho
            grads = grad_w + grad_b if flat is None else flat.store_grads(grad_w + grad_b)
        return objective, err, norm_sq, grads

    # -- adaptive layer steps -------------------------------------------------------------------

    def jumps(self, x: Tensor) -> Tensor:
        """Relative jumps ‖A_ℓ − A_{ℓ-1}‖_F / ‖A_ℓ‖_F over the inputs x, ℓ = 1..L: (E, L)."""
        with torch.no_grad():
            reps = self.representations(x)
            return torch.stack([torch.linalg.vector_norm(b - a, dim=(1, 2)) / torch.linalg.vector_norm(b, dim=(1, 2))
                                for a, b in zip(reps[:-1], reps[1:])], 1)

    def adapt_steps_(self, x: Tensor, rule, active: Tensor) -> None:
        """ρ_ℓ ← ρ_ℓ·(J̄/J_ℓ)^rate (J_ℓ the relative jumps on x, J̄ their geometric mean), clipped to
        [min_factor/L, max_factor/L], normalized; in place. The members share ρ, so log J_ℓ is
        averaged over the `active` members (none active: unchanged). A layer's jump is about
        ρ_ℓ times the path's speed there, so rate 1 evens the jumps out at the current speeds."""
        if not bool(active.any()):
            return
        with torch.no_grad():
            log_j = self.jumps(x).clamp_min(1e-300).log()[active].mean(0)
            rho = self.steps * torch.exp(rule.rate * (log_j.mean() - log_j))
            rho = (rho / rho.sum()).clamp(rule.min_factor / self.depth, rule.max_factor / self.depth)
            self.steps.copy_(rho / rho.sum())

    # -- what analyze measures ------------------------------------------------------------------

    def operators(self) -> dict[str, Tensor]:
        return {f"weight.{i}": w for i, w in enumerate(self.weights, start=1)}

    def sites(self, x: Tensor) -> list[Site]:
        """``alpha.ℓ``: α_{p_ℓ}(X) (E, N, w) and ReLU of it (α_{p_L}: no σ follows), ℓ = 1..L;
        last ``output``: f(X), its first d_out coordinates."""
        reps = self.representations(x)[1:]
        last = len(reps)
        sites = [Site(f"alpha.{i}", a, torch.relu(a) if i < last else a, i < last) for i, a in enumerate(reps, start=1)]
        out = reps[-1][..., : self.d_out]
        return sites + [Site("output", out, out, False)]

    def layer_keys(self) -> list[LayerKey]:
        return [LayerKey(i, f"weight.{i}", f"alpha.{i}", f"bias.{i}") for i in range(1, self.depth + 1)]
