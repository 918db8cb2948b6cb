"""EnsembleMLP: E independent fully connected ReLU networks of one shape, run as one.

Network (docs/theory.md §1): α_0 = x, α_ℓ = W_ℓ σ(α_{ℓ-1}) + b_ℓ for ℓ = 1..L, σ = ReLU applied from
ℓ ≥ 2 (never to the input), output f(x) = α_L(x). Member e's parameters are
``weights[ℓ-1][e]`` of shape (fan_out, fan_in) and ``biases[ℓ-1][e]`` of shape (fan_out,), so
``weights[ℓ-1]`` has shape (E, d_ℓ, d_{ℓ-1}). Every layer is one batched matmul over members.

>>> net = EnsembleMLP.init(members=4, dims=[20, 100, 100, 20], seeds=[0, 1, 2, 3])
>>> net(torch.randn(500, 20)).shape          # inputs shared by the members
torch.Size([4, 500, 20])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnrank.errors import DataError, ModelError


class EnsembleMLP(nn.Module):
    """E ReLU MLPs with layer widths `dims` = [d_in, d_1, ..., d_out] (depth L = len(dims) - 1)."""

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor]):
        super().__init__()
        if len(weights) == 0 or len(weights) != len(biases):
            raise ModelError("an ensemble needs as many bias vectors as weight matrices, at least one")
        members = weights[0].shape[0]
        for i, (w, b) in enumerate(zip(weights, biases)):
            if w.dim() != 3 or b.shape != (members, w.shape[1]):
                raise ModelError(f"layer {i + 1}: weight {tuple(w.shape)} and bias {tuple(b.shape)} do not form an (E, out, in), (E, out) pair")
            if i > 0 and w.shape[2] != weights[i - 1].shape[1]:
                raise ModelError(f"layer {i + 1}: fan_in {w.shape[2]} != previous fan_out {weights[i - 1].shape[1]}")
        self.weights = nn.ParameterList(nn.Parameter(w) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b) for b in biases)

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
    ) -> "EnsembleMLP":
        """He-initialised ensemble: W_ℓ ~ N(0, s² g / fan_in), g = 1 for ℓ = 1 else 2; b = 0.

        Member e draws its weights from a generator seeded with ``seeds[e]`` (default e) and
        scales them by ``init_scale[e]``, so it equals a one-member ensemble built alone.
        """
        seeds = list(range(members)) if seeds is None else list(seeds)
        scales = [float(init_scale)] * members if isinstance(init_scale, (int, float)) else list(init_scale)
        if len(seeds) != members or len(scales) != members:
            raise ModelError(f"need {members} seeds and init scales, got {len(seeds)} and {len(scales)}")
        weights = [torch.empty(members, d_out, d_in, dtype=torch.float64) for d_in, d_out in zip(dims[:-1], dims[1:])]
        for e, (seed, scale) in enumerate(zip(seeds, scales)):
            gen = torch.Generator().manual_seed(int(seed))
            for layer, w in enumerate(weights):
                gain = 1.0 if layer == 0 else 2.0
                std = scale * (gain / w.shape[2]) ** 0.5
                w[e] = torch.randn(w.shape[1:], generator=gen, dtype=torch.float64) * std
        biases = [torch.zeros(members, w.shape[1], dtype=torch.float64) for w in weights]
        to = dict(dtype=dtype, device=device)
        return cls([w.to(**to) for w in weights], [b.to(**to) for b in biases])

    @classmethod
    def from_sequential(cls, *nets: nn.Module, dtype: torch.dtype | None = None) -> "EnsembleMLP":
        """Stack one or more ``nn.Sequential(Linear, ReLU, Linear, ..., Linear)`` of one shape.

        Linear layers without bias get zero biases. Any other module raises ModelError.
        """
        if not nets:
            raise ModelError("from_sequential needs at least one network")
        layers = [_linear_layers(net) for net in nets]
        shapes = {tuple((lin.out_features, lin.in_features) for lin in ls) for ls in layers}
        if len(shapes) != 1:
            raise ModelError("all networks of an ensemble must have the same layer shapes")
        weights, biases = [], []
        for i in range(len(layers[0])):
            ws = [ls[i].weight.detach() for ls in layers]
            bs = [ls[i].bias.detach() if ls[i].bias is not None else torch.zeros_like(w[:, 0]) for w, ls in zip(ws, layers)]
            weights.append(torch.stack(ws).to(dtype or ws[0].dtype).clone())
            biases.append(torch.stack(bs).to(dtype or ws[0].dtype).clone())
        return cls(weights, biases)

    def to_sequential(self, member: int = 0) -> nn.Sequential:
        """Member `member` as a plain ``nn.Sequential`` of Linear and ReLU (a copy)."""
        if not 0 <= member < self.members:
            raise ModelError(f"member {member} out of range 0..{self.members - 1}")
        modules: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i > 0:
                modules.append(nn.ReLU())
            lin = nn.Linear(w.shape[2], w.shape[1], dtype=w.dtype, device=w.device)
            with torch.no_grad():
                lin.weight.copy_(w[member])
                lin.bias.copy_(b[member])
            modules.append(lin)
        return nn.Sequential(*modules)

    def select(self, members: Sequence[int] | Tensor) -> "EnsembleMLP":
        """A new ensemble holding copies of the given members, in that order."""
        idx = torch.as_tensor(members, dtype=torch.long, device=self.weights[0].device)
        return EnsembleMLP([w.detach()[idx].clone() for w in self.weights], [b.detach()[idx].clone() for b in self.biases])

    # -- shape --------------------------------------------------------------------------------------

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def dims(self) -> list[int]:
        """[d_in, d_1, ..., d_out]."""
        return [self.weights[0].shape[2]] + [w.shape[1] for w in self.weights]

    # -- evaluation ---------------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (2, 3) or x.shape[-1] != self.dims[0] or (x.dim() == 3 and x.shape[0] != self.members):
            raise DataError(
                f"input of shape {tuple(x.shape)} does not fit an ensemble of {self.members} nets with "
                f"d_in = {self.dims[0]}: expected (N, {self.dims[0]}) or ({self.members}, N, {self.dims[0]})"
            )

    def _layer_outputs(self, x: Tensor):
        """Yield α_1(x), ..., α_L(x), each (E, N, d_ℓ)."""
        self._check_input(x)
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i > 0:
                h = torch.relu(h)
            if h.dim() == 3:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:  # shared inputs (N, d_in): one broadcast matmul
                h = torch.matmul(h, w.transpose(1, 2)) + b.unsqueeze(1)
            yield h

    def preactivations(self, x: Tensor) -> list[Tensor]:
        """[α_1(x), ..., α_L(x)], each (E, N, d_ℓ); x is (N, d_in) shared or (E, N, d_in)."""
        return list(self._layer_outputs(x))

    def forward(self, x: Tensor) -> Tensor:
        """f(x) = α_L(x) of every member: (E, N, d_out)."""
        for h in self._layer_outputs(x):
            pass
        return h

    def param_norm_sq(self) -> Tensor:
        """‖θ‖² = Σ_ℓ ‖W_ℓ‖_F² + ‖b_ℓ‖² per member: (E,)."""
        total = sum(w.square().sum((1, 2)) for w in self.weights)
        return total + sum(b.square().sum(1) for b in self.biases)


def _linear_layers(net: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a Linear/ReLU/Linear/.../Linear Sequential, validated."""
    if not isinstance(net, nn.Sequential):
        raise ModelError(f"expected a torch.nn.Sequential of Linear and ReLU, got {type(net).__name__}")
    mods = list(net)
    for i, m in enumerate(mods):
        if not isinstance(m, (nn.Linear, nn.ReLU)):
            raise ModelError(f"unsupported module at position {i}: {type(m).__name__} (only Linear and ReLU are supported)")
    pattern_ok = (
        len(mods) % 2 == 1
        and all(isinstance(m, nn.Linear) for m in mods[0::2])
        and all(isinstance(m, nn.ReLU) for m in mods[1::2])
    )
    if not pattern_ok:
        names = ", ".join(type(m).__name__ for m in mods)
        raise ModelError(f"expected Linear, ReLU, Linear, ..., Linear alternating; got [{names}]")
    return mods[0::2]
