"""EnsembleMLP: E independent fully connected networks of one shape, run as one (model.kind "mlp").

Network (docs/theory.md §1): α_0 = x, α_ℓ = W_ℓ σ(α_{ℓ-1}) + b_ℓ for ℓ = 1..L, σ applied from
ℓ ≥ 2 (never to the input), output f(x) = α_L(x); σ = ReLU (``activation="relu"``) or the identity
(``"linear"``, a deep linear network); without biases (``bias=False``) every b_ℓ is absent.
Member e's parameters are ``weights[ℓ-1][e]`` of shape (fan_out, fan_in) and ``biases[ℓ-1][e]``
of shape (fan_out,), so ``weights[ℓ-1]`` has shape (E, d_ℓ, d_{ℓ-1}). Every layer is one batched
matmul over members; the gradient has a hand-written fast path (bnrank.training.backprop).

>>> net = EnsembleMLP.init(members=4, dims=[20, 100, 100, 20], seeds=[0, 1, 2, 3])
>>> net(torch.randn(500, 20)).shape          # inputs shared by the members
torch.Size([4, 500, 20])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from bnrank.errors import ModelError
from bnrank.models.family import HOMOGENEOUS, LAYERED_PRODUCT, EnsembleModel, LayerKey, Site

Activation = Literal["relu", "linear"]
ACTIVATIONS = ("relu", "linear")


class EnsembleMLP(EnsembleModel):
    """E MLPs with layer widths `dims` = [d_in, d_1, ..., d_out] (depth L = len(dims) - 1)."""

    kind = "mlp"
    capabilities = frozenset({HOMOGENEOUS, LAYERED_PRODUCT})

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor] | None, activation: Activation = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ModelError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if len(weights) == 0 or (biases is not None and len(weights) != len(biases)):
            raise ModelError("an ensemble needs at least one weight matrix and, with biases, one bias vector per matrix")
        members = weights[0].shape[0]
        for i, w in enumerate(weights):
            if w.dim() != 3 or w.shape[0] != members:
                raise ModelError(f"layer {i + 1}: weight {tuple(w.shape)} is not an (E, out, in) tensor with E = {members}")
            if biases is not None and biases[i].shape != (members, w.shape[1]):
                raise ModelError(f"layer {i + 1}: weight {tuple(w.shape)} and bias {tuple(biases[i].shape)} do not form an (E, out, in), (E, out) pair")
            if i > 0 and w.shape[2] != weights[i - 1].shape[1]:
                raise ModelError(f"layer {i + 1}: fan_in {w.shape[2]} != previous fan_out {weights[i - 1].shape[1]}")
        self.activation: Activation = activation
        self.weights = nn.ParameterList(nn.Parameter(w) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b) for b in (biases or []))

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        members: int,
        dims: Sequence[int],
        seeds: Sequence[int] | None = None,
        init_scale: float | Sequence[float] = 1.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        activation: Activation = "relu",
        bias: bool = True,
    ) -> "EnsembleMLP":
        """He-initialised ensemble: W_ℓ ~ N(0, s² g / fan_in), g = 1 for ℓ = 1, else 2 for ReLU
        and 1 for linear nets; b = 0.

        Member e draws its weights from a generator seeded with ``seeds[e]`` (default e) and
        scales them by ``init_scale[e]``, so it equals a one-member ensemble built alone.
        """
        seeds = list(range(members)) if seeds is None else list(seeds)
        scales = [float(init_scale)] * members if isinstance(init_scale, (int, float)) else list(init_scale)
        if len(seeds) != members or len(scales) != members:
            raise ModelError(f"need {members} seeds and init scales, got {len(seeds)} and {len(scales)}")
        weights = [torch.empty(members, d_out, d_in, dtype=torch.float64) for d_in, d_out in zip(dims[:-1], dims[1:])]
        hidden_gain = 2.0 if activation == "relu" else 1.0
        for e, (seed, scale) in enumerate(zip(seeds, scales)):
            gen = torch.Generator().manual_seed(int(seed))
            for layer, w in enumerate(weights):
                gain = 1.0 if layer == 0 else hidden_gain
                std = scale * (gain / w.shape[2]) ** 0.5
                w[e] = torch.randn(w.shape[1:], generator=gen, dtype=torch.float64) * std
        biases = [torch.zeros(members, w.shape[1], dtype=torch.float64) for w in weights] if bias else None
        to = dict(dtype=dtype, device=device)
        return cls([w.to(**to) for w in weights], None if biases is None else [b.to(**to) for b in biases], activation)

    @classmethod
    def from_config(cls, config, d_in: int, d_out: int, seeds: Sequence[int], init_scale: Sequence[float],
                    dtype: torch.dtype, device) -> "EnsembleMLP":
        """`config` is a bnrank.config.MlpConfig: `depth` layers, hidden width `width`."""
        dims = [d_in] + [config.width] * (config.depth - 1) + [d_out]
        return cls.init(len(seeds), dims, seeds=seeds, init_scale=list(init_scale), dtype=dtype, device=device,
                        activation=config.activation, bias=config.bias)

    def tensors(self) -> dict[str, Tensor]:
        """``weight.{ℓ}`` (E, d_ℓ, d_{ℓ-1}) and, with biases, ``bias.{ℓ}`` (E, d_ℓ), ℓ = 1..L."""
        out = {f"weight.{i}": w for i, w in enumerate(self.weights, start=1)}
        return out | {f"bias.{i}": b for i, b in enumerate(self.biases, start=1)}

    def metadata(self) -> dict[str, str]:
        return {"activation": self.activation, "bias": str(self.has_bias).lower()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metadata: dict[str, str]) -> "EnsembleMLP":
        """Inverse of `tensors`/`metadata`; a file without the metadata is a biased ReLU net."""
        depth = max(int(k.split(".")[1]) for k in tensors if k.startswith("weight."))
        weights = [tensors[f"weight.{i}"] for i in range(1, depth + 1)]
        has_bias = metadata.get("bias", "true") == "true"
        biases = [tensors[f"bias.{i}"] for i in range(1, depth + 1)] if has_bias else None
        return cls(weights, biases, metadata.get("activation", "relu"))  # type: ignore[arg-type]

    @classmethod
    def from_sequential(cls, *nets: nn.Module, dtype: torch.dtype | None = None) -> "EnsembleMLP":
        """Stack one or more ``nn.Sequential(Linear, ReLU, Linear, ..., Linear)`` of one shape, or
        of Linear layers only (a linear network).

        Linear layers without bias get zero biases (no biases at all when none has one). Any
        other module raises ModelError.
        """
        if not nets:
            raise ModelError("from_sequential needs at least one network")
        parsed = [_linear_layers(net) for net in nets]
        layers = [ls for ls, _ in parsed]
        activations = {act for _, act in parsed}
        if len(activations) != 1:
            raise ModelError("all networks of an ensemble must use the same activation")
        shapes = {tuple((lin.out_features, lin.in_features) for lin in ls) for ls in layers}
        if len(shapes) != 1:
            raise ModelError("all networks of an ensemble must have the same layer shapes")
        any_bias = any(lin.bias is not None for ls in layers for lin in ls)
        weights, biases = [], []
        for i in range(len(layers[0])):
            ws = [ls[i].weight.detach() for ls in layers]
            bs = [ls[i].bias.detach() if ls[i].bias is not None else torch.zeros_like(w[:, 0]) for w, ls in zip(ws, layers)]
            weights.append(torch.stack(ws).to(dtype or ws[0].dtype).clone())
            biases.append(torch.stack(bs).to(dtype or ws[0].dtype).clone())
        return cls(weights, biases if any_bias else None, activations.pop())

    def to_sequential(self, member: int = 0) -> nn.Sequential:
        """Member `member` as a plain ``nn.Sequential`` of Linear and ReLU (Linear only for a
        linear net), a copy."""
        if not 0 <= member < self.members:
            raise ModelError(f"member {member} out of range 0..{self.members - 1}")
        modules: list[nn.Module] = []
        for i, w in enumerate(self.weights):
            if i > 0 and self.activation == "relu":
                modules.append(nn.ReLU())
            lin = nn.Linear(w.shape[2], w.shape[1], bias=self.has_bias, dtype=w.dtype, device=w.device)
            with torch.no_grad():
                lin.weight.copy_(w[member])
                if self.has_bias:
                    lin.bias.copy_(self.biases[i][member])
            modules.append(lin)
        return nn.Sequential(*modules)

    # -- shape --------------------------------------------------------------------------------------

    @property
    def has_bias(self) -> bool:
        return len(self.biases) > 0

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def dims(self) -> list[int]:
        """[d_in, d_1, ..., d_out]."""
        return [self.weights[0].shape[2]] + [w.shape[1] for w in self.weights]

    @property
    def d_in(self) -> int:
        return self.weights[0].shape[2]

    @property
    def d_out(self) -> int:
        return self.weights[-1].shape[1]

    def describe(self) -> str:
        return f"mlp ({self.activation}{'' if self.has_bias else ', no bias'})"

    def bias_list(self) -> list[Tensor | None]:
        """b_1..b_L, None for every layer of a net without biases."""
        return list(self.biases) if self.has_bias else [None] * self.depth

    # -- evaluation ---------------------------------------------------------------------------------

    def sigma(self, h: Tensor) -> Tensor:
        return torch.relu(h) if self.activation == "relu" else h

    def _layer_outputs(self, x: Tensor):
        """Yield α_1(x), ..., α_L(x), each (E, N, d_ℓ)."""
        self.check_input(x)
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.bias_list())):
            if i > 0:
                h = self.sigma(h)
            if h.dim() == 3:
                h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:  # shared inputs (N, d_in): one broadcast matmul
                h = torch.matmul(h, w.transpose(1, 2))
                h = h if b is None else h + b.unsqueeze(1)
            yield h

    def preactivations(self, x: Tensor) -> list[Tensor]:
        """[α_1(x), ..., α_L(x)], each (E, N, d_ℓ); x is (N, d_in) shared or (E, N, d_in)."""
        return list(self._layer_outputs(x))

    def forward(self, x: Tensor) -> Tensor:
        """f(x) = α_L(x) of every member: (E, N, d_out)."""
        for h in self._layer_outputs(x):
            pass
        return h

    def member_forward(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        depth = self.depth
        weights, biases = params[:depth], (params[depth:] if self.has_bias else [None] * depth)
        h = x
        for i, (w, b) in enumerate(zip(weights, biases)):
            if i > 0:
                h = self.sigma(h)
            h = h @ w.T if b is None else h @ w.T + b
        return h

    def param_norm_sq(self) -> Tensor:
        """‖θ‖² = Σ_ℓ ‖W_ℓ‖_F² + ‖b_ℓ‖² per member: (E,)."""
        total = sum(w.square().sum((1, 2)) for w in self.weights)
        return total + sum(b.square().sum(1) for b in self.biases)

    def objective_and_grads(self, x, y, lam, workspace=None, reduction="sum", flat=None):
        """The hand-written backprop of bnrank.training.backprop (equal to the generic path)."""
        from bnrank.training.backprop import objective_and_grads

        return objective_and_grads(self, x, y, lam, workspace, reduction, flat)

    def input_jacobians(self, x: Tensor) -> Tensor:
        """Jf(x) = W_L D_{L-1} ⋯ D_1 W_1 by one batched backward product (bnrank.measure.jacobian)."""
        from bnrank.measure.jacobian import input_jacobians

        return input_jacobians(list(self.weights), self.preactivations(x), self.activation).jac

    # -- balance ------------------------------------------------------------------------------------

    def layer_balance_errors(self) -> Tensor:
        from bnrank.training.rebalance import layer_balance_errors

        return layer_balance_errors(self)

    def balance_error(self) -> Tensor:
        from bnrank.training.rebalance import balance_error

        return balance_error(self)

    def rebalance_(self, sweeps: int = 5, active: Tensor | None = None) -> None:
        from bnrank.training.rebalance import rebalance_

        rebalance_(self, sweeps, active)

    def cap_middle_rank_(self, caps: Tensor, active: Tensor | None = None) -> None:
        """Replace W_{⌈L/2⌉} of every member e (of the `active` ones, (E,) bool) by its best
        rank-caps[e] approximation (SVD in float64); caps: (E,) integer, < 0 for no cap."""
        from bnrank.training.recipe import middle_layer

        w = self.weights[middle_layer(self.depth) - 1]
        with torch.no_grad():
            finite = torch.isfinite(w).flatten(1).all(1)
            u, s, vh = torch.linalg.svd(torch.where(finite[:, None, None], w, 0).double(), full_matrices=False)
            caps = torch.where(finite, caps.to(device=s.device), -1)
            keep = torch.arange(s.shape[-1], device=s.device) < caps[:, None]
            capped = ((u * (s * keep)[:, None, :]) @ vh).to(w.dtype)
            change = caps >= 0 if active is None else (caps >= 0) & active.to(s.device)
            w.copy_(torch.where(change[:, None, None], capped, w))

    # -- what analyze measures ----------------------------------------------------------------------

    def operators(self) -> dict[str, Tensor]:
        return {f"weight.{i}": w for i, w in enumerate(self.weights, start=1)}

    def sites(self, x: Tensor) -> list[Site]:
        """``alpha.ℓ``: α_ℓ(X) and σ(α_ℓ(X)) for ℓ < L; ``alpha.L``: the output (no σ)."""
        pre = self.preactivations(x)
        last = len(pre)
        return [Site(f"alpha.{i}", a, self.sigma(a) if i < last else a, i < last) for i, a in enumerate(pre, start=1)]

    def layer_keys(self) -> list[LayerKey]:
        return [LayerKey(i, f"weight.{i}", f"alpha.{i}", f"bias.{i}" if self.has_bias else None) for i in range(1, self.depth + 1)]


def _linear_layers(net: nn.Module) -> tuple[list[nn.Linear], Activation]:
    """The Linear layers of a Linear/ReLU/Linear/.../Linear (or Linear-only) Sequential, validated,
    with its activation."""
    if not isinstance(net, nn.Sequential):
        raise ModelError(f"expected a torch.nn.Sequential of Linear and ReLU, got {type(net).__name__}")
    mods = list(net)
    for i, m in enumerate(mods):
        if not isinstance(m, (nn.Linear, nn.ReLU)):
            raise ModelError(f"unsupported module at position {i}: {type(m).__name__} (only Linear and ReLU are supported)")
    if len(mods) > 1 and all(isinstance(m, nn.Linear) for m in mods):
        return mods, "linear"
    pattern_ok = (
        len(mods) % 2 == 1
        and all(isinstance(m, nn.Linear) for m in mods[0::2])
        and all(isinstance(m, nn.ReLU) for m in mods[1::2])
    )
    if not pattern_ok:
        names = ", ".join(type(m).__name__ for m in mods)
        raise ModelError(f"expected Linear, ReLU, Linear, ..., Linear alternating; got [{names}]")
    return mods[0::2], "relu"
