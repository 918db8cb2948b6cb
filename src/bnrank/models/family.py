"""The model-family seam: what every kind of network provides to the trainer, analyze and sweeps.

A family is an `EnsembleModel` subclass registered under its config's ``model.kind``
(bnrank.models.registry). An ensemble holds E networks of one architecture with stacked
parameters (each parameter tensor has the member axis first, shape (E, ...)) and runs them as
one. A family provides:

- construction from its config (`from_config`) and from named tensors (`from_tensors`, the
  checkpoint layout; `tensors` + `metadata` write it);
- `member_forward(params, x)`: one member's network as a pure function of its parameters
  (``params[i]`` = ``list(self.parameters())[i][e]``), the generic reference path that
  `bnrank.models.functional` differentiates with torch.func (grad, jvp, vjp, vmap over members);
- `forward(x)` for all members at once, `param_norm_sq()` (the regularizer R(θ) of
  C = fit + λ·R(θ)), and optionally fast paths that override the generic ones:
  `objective_and_grads` (the trainer's hot path) and `input_jacobians`;
- what analyze measures: `operators()` (named weight operators, whose spectra are taken),
  `sites(x)` (named representations), and `layer_keys()` pairing them into table rows;
- `capabilities`: e.g. HOMOGENEOUS (positively homogeneous hidden units: re-balancing, the
  balance error and the homogeneity-based bounds hold), RELU_CURVATURE (exact ReLU products for
  ntk_top/hessian_top). `require(capability, what)` raises one ModelError line naming the family
  and what it lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bnrank.errors import DataError, ModelError

HOMOGENEOUS = "homogeneous"
"""Every hidden unit is positively homogeneous: scaling its incoming weights by s > 0 and its
outgoing ones by 1/s leaves f unchanged (ReLU, identity). Re-balancing, the balance error, the
bottleneck budget and the Schatten bound ‖θ‖² ≥ L·Σ s_i(Jf)^{2/L} are offered only then."""

LAYERED_PRODUCT = "layered_product"
"""f(x) = W_L D_{L-1}(x) W_{L-1} ⋯ D_1(x) W_1 x + (biases) with diagonal D_ℓ(x): the family's
hand-written Jacobian, NTK-trace and curvature products apply (bnrank.measure.jacobian,
bnrank.measure.curvature)."""


LAYER_STEPS = "layer_steps"
"""The network has layer steps ρ_ℓ (shared by the members) that `adapt_steps_` can re-balance
during training (train.adaptive_steps)."""


@dataclass(frozen=True)
class Site:
    """A named representation of N inputs: `pre` and `post` (E, N, d), post = σ(pre) for the
    family's activation σ; `nonlinear` is False where no activation follows (the output), so
    post is pre by construction."""

    name: str
    pre: Tensor
    post: Tensor
    nonlinear: bool


@dataclass(frozen=True)
class LayerKey:
    """One row of analyze's layer table: its 1-based `layer` index, the `operator` whose spectrum
    it holds, the representation `site` after it and the `bias` tensor added there (a name in
    `EnsembleModel.tensors`, None without one)."""

    layer: int
    operator: str
    site: str
    bias: str | None = None


class EnsembleModel(nn.Module):
    """Base class of the model families; see the module docstring for the protocol."""

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()

    # -- construction and storage ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Any, d_in: int, d_out: int, seeds: Sequence[int], init_scale: Sequence[float],
                    dtype: torch.dtype, device: torch.device | str) -> "EnsembleModel":
        """An initialised ensemble of len(seeds) members; member e is drawn from seeds[e] alone."""
        raise NotImplementedError

    def tensors(self) -> dict[str, Tensor]:
        """Named stacked parameters (E, ...) as stored in a checkpoint."""
        raise NotImplementedError

    def metadata(self) -> dict[str, str]:
        """What `from_tensors` needs besides the tensors (string values, a checkpoint's metadata)."""
        return {}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metadata: dict[str, str]) -> "EnsembleModel":
        raise NotImplementedError

    def select(self, members: Sequence[int] | Tensor) -> "EnsembleModel":
        """A new ensemble holding copies of the given members, in that order."""
        idx = torch.as_tensor(members, dtype=torch.long, device=self.reference.device)
        return type(self).from_tensors({k: v.detach()[idx].clone() for k, v in self.tensors().items()}, self.metadata())

    # -- shape ----------------------------------------------------------------------------------

    @property
    def reference(self) -> Tensor:
        """A parameter giving the ensemble's dtype and device."""
        return next(self.parameters())

    @property
    def members(self) -> int:
        return self.reference.shape[0]

    @property
    def d_in(self) -> int:
        raise NotImplementedError

    @property
    def d_out(self) -> int:
        raise NotImplementedError

    @property
    def depth(self) -> int:
        """The depth L of the theory's formulas (the L of L·Σ s_i^{2/L})."""
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """DataError unless x is (N, d_in) shared by the members or (E, N, d_in)."""
        if x.dim() not in (2, 3) or x.shape[-1] != self.d_in or (x.dim() == 3 and x.shape[0] != self.members):
            raise DataError(
                f"input of shape {tuple(x.shape)} does not fit an ensemble of {self.members} nets with "
                f"d_in = {self.d_in}: expected (N, {self.d_in}) or ({self.members}, N, {self.d_in})"
            )

    # -- capabilities ---------------------------------------------------------------------------

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str, what: str) -> None:
        """ModelError naming the family and the capability `what` needs, unless it has it."""
        if capability not in self.capabilities:
            raise ModelError(f"{what} needs a {capability.replace('_', ' ')} model, not {self.describe()} (model.kind {self.kind!r})")

    def describe(self) -> str:
        """The family's kind with its distinguishing options, e.g. "mlp (relu)"."""
        return self.kind

    # -- evaluation -----------------------------------------------------------------------------

    def member_forward(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        """One member's f(x): params ordered like ``self.parameters()`` without the member axis,
        x (N, d_in) → (N, d_out). Pure, so torch.func can differentiate and vmap it."""
        raise NotImplementedError

    def member_param_norm_sq(self, params: Sequence[Tensor]) -> Tensor:
        """One member's regularizer R(θ) (a scalar): ‖θ‖² unless the family says otherwise."""
        return sum(p.square().sum() for p in params)

    def forward(self, x: Tensor) -> Tensor:
        """f(x) of every member: x (N, d_in) shared or (E, N, d_in) → (E, N, d_out)."""
        from bnrank.models.functional import forward

        self.check_input(x)
        return forward(self, x)

    def param_norm_sq(self) -> Tensor:
        """The regularizer R(θ) per member: (E,)."""
        return torch.vmap(self.member_param_norm_sq)(list(self.parameters()))

    def objective_and_grads(self, x: Tensor, y: Tensor, lam: Tensor, workspace=None, reduction: str = "sum",
                            flat=None) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """(objective, mse, R(θ), grads) per member, grads ordered like ``self.parameters()``
        (written into ``flat.grads`` when `flat` is given); see bnrank.training.objective for C.
        The generic path differentiates `member_forward` with torch.func."""
        from bnrank.models.functional import objective_and_grads

        obj, err, norm, grads = objective_and_grads(self, x, y, lam, reduction)
        return obj, err, norm, (grads if flat is None else flat.store_grads(grads))

    def input_jacobians(self, x: Tensor) -> Tensor:
        """Jf(x) of every member at every input: x (N, d_in) → (E, N, d_out, d_in)."""
        from bnrank.models.functional import input_jacobians

        return input_jacobians(self, x)

    # -- balance (HOMOGENEOUS families) ----------------------------------------------------------

    def layer_balance_errors(self) -> Tensor:
        """Σ_i |c_i − a_i| / Σ_i (c_i + a_i) per hidden layer, a_i / c_i the incoming / outgoing
        squared norms of its units: (E, n_hidden_layers)."""
        self.require(HOMOGENEOUS, "the balance error")
        raise NotImplementedError

    def balance_error(self) -> Tensor:
        """The same over all hidden units at once: (E,), 0 when balanced."""
        self.require(HOMOGENEOUS, "the balance error")
        raise NotImplementedError

    def rebalance_(self, sweeps: int = 5, active: Tensor | None = None) -> None:
        """Re-balance every hidden unit in place (f unchanged, R(θ) never increases); members with
        ``active[e] = False`` untouched."""
        self.require(HOMOGENEOUS, "re-balancing")
        raise NotImplementedError

    def adapt_steps_(self, x: Tensor, rule, active: Tensor) -> None:
        """Re-balance the layer steps in place from the representations of x (LAYER_STEPS
        families; `rule` a bnrank.config.AdaptiveSteps, `active` (E,) the members training)."""
        self.require(LAYER_STEPS, "train.adaptive_steps")
        raise NotImplementedError

    # -- what analyze measures ------------------------------------------------------------------

    def operators(self) -> dict[str, Tensor]:
        """Named weight operators (E, d_out_op, d_in_op), in network order."""
        raise NotImplementedError

    def sites(self, x: Tensor) -> list[Site]:
        """The representations of inputs x (N, d_in), in network order; the last is the output."""
        raise NotImplementedError

    def layer_keys(self) -> list[LayerKey]:
        """Rows of analyze's layer table: which operator and site each holds."""
        raise NotImplementedError

    def middle_operator(self) -> str:
        """The operator whose rank a sweep reports as `mid_rank`: the ⌈n/2⌉-th of n operators."""
        names = list(self.operators())
        return names[(len(names) + 1) // 2 - 1]
