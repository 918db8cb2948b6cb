"""Neuron balancedness (docs/theory.md §1 (a), (b)).

Hidden neuron i of layer ℓ (1 ≤ ℓ < L) of an MLP has incoming norm a_i = ‖W_ℓ[i, :]‖² + b_ℓ[i]²
(no b_ℓ term without biases) and outgoing norm c_i = ‖W_{ℓ+1}[:, i]‖². Scaling its incoming
weights by s > 0 and outgoing ones by 1/s leaves f unchanged (ReLU and the identity are
positively homogeneous); s = (c_i/a_i)^{1/4} equalizes them and
minimizes s²a_i + c_i/s². At any critical point of the regularized objective a_i = c_i.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _in_out(model, layer: int) -> tuple[Tensor, Tensor]:
    """(a, c), each (E, d_layer), for the hidden neurons after weight matrix `layer` (0-based)."""
    w, b, w_next = model.weights[layer], model.bias_list()[layer], model.weights[layer + 1]
    a = w.square().sum(2)
    return (a if b is None else a + b.square()), w_next.square().sum(1)


def layer_balance_errors(model) -> Tensor:
    """Σ_i |c_i − a_i| / Σ_i (c_i + a_i) for each hidden layer: (E, L − 1)."""
    with torch.no_grad():
        cols = []
        for layer in range(model.depth - 1):
            a, c = _in_out(model, layer)
            cols.append((c - a).abs().sum(1) / (c + a).sum(1).clamp_min(1e-30))
        if not cols:
            return torch.zeros(model.members, 0, dtype=model.weights[0].dtype, device=model.weights[0].device)
        return torch.stack(cols, 1)


def balance_error(model) -> Tensor:
    """Σ_{ℓ,i} |c_i − a_i| / Σ_{ℓ,i} (c_i + a_i) over all hidden neurons: (E,); 0 if balanced."""
    with torch.no_grad():
        num = torch.zeros(model.members, dtype=model.weights[0].dtype, device=model.weights[0].device)
        den = torch.zeros_like(num)
        for layer in range(model.depth - 1):
            a, c = _in_out(model, layer)
            num += (c - a).abs().sum(1)
            den += (c + a).sum(1)
        return num / den.clamp_min(1e-30)


def rebalance_(model, sweeps: int = 5, active: Tensor | None = None) -> None:
    """Re-balance every hidden neuron of an EnsembleMLP in place (f unchanged, ‖θ‖² never increases).

    Each sweep balances layers 1..L-1 in turn; balancing layer ℓ+1 changes the outgoing norms
    of layer ℓ, so a few sweeps are made (coordinate descent on a convex function of log s).
    A neuron with a = 0 or c = 0 contributes nothing to f, so both its sides are set to zero.
    Members with ``active[e] = False`` are left untouched.
    """
    with torch.no_grad():
        for _ in range(sweeps):
            for layer in range(model.depth - 1):
                a, c = _in_out(model, layer)
                dead = (a == 0) | (c == 0)
                s = torch.where(dead, 0.0, (c / a.clamp_min(1e-30)).pow(0.25))
                inv = torch.where(dead, 0.0, 1.0 / s.clamp_min(1e-30))
                if active is not None:
                    s = torch.where(active[:, None], s, 1.0)
                    inv = torch.where(active[:, None], inv, 1.0)
                model.weights[layer].mul_(s[:, :, None])
                if model.has_bias:
                    model.biases[layer].mul_(s)
                model.weights[layer + 1].mul_(inv[:, None, :])
