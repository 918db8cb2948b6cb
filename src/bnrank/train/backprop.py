"""Exact gradient of the regularized objective of a ReLU ensemble, by hand-written backprop.

The trainer's hot path: one batched forward and one batched backward with no autograd graph.
Per layer the forward is one ``baddbmm`` (bias fused) and an in-place ReLU; the backward is two
``bmm`` (weight gradient, signal to the layer below) and one masking pass. Only the
post-activations a_ℓ = σ(α_ℓ) are kept (a_ℓ > 0 ⇔ α_ℓ > 0 gives the ReLU mask). Equal to
autograd's gradient of `bnrank.train.objective.objective` (tests/test_backprop.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnrank.models import EnsembleMLP


def objective_and_grads(
    model: EnsembleMLP, x: Tensor, y: Tensor, lam: Tensor
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """(objective, mse, ‖θ‖², grads) for C = (1/N)Σ‖f(x_i) − y_i‖² + λ‖θ‖², per member.

    x: (N, d_in) or (E, N, d_in); y: (N, d_out) or (E, N, d_out); lam: (E,).
    grads is ordered like ``model.parameters()``: dC/dW_1..dC/dW_L, then dC/db_1..dC/db_L.
    """
    weights, biases = list(model.weights), list(model.biases)
    members, depth = model.members, model.depth
    with torch.no_grad():
        a = x if x.dim() == 3 else x.expand(members, *x.shape)
        inputs = []  # a_0 = x, a_ℓ = σ(α_ℓ): the input of layer ℓ + 1
        for layer, (w, b) in enumerate(zip(weights, biases)):
            inputs.append(a)
            a = torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))
            if layer < depth - 1:
                a.clamp_(min=0)
        residual = a.sub_(y)
        mse = residual.square().sum(-1).mean(-1)
        norm_sq = model.param_norm_sq()
        objective = mse + lam * norm_sq
        two_lam = 2 * lam
        delta = residual.mul_(2.0 / residual.shape[-2])  # dC/dα_L: (E, N, d_out)
        grad_w: list[Tensor] = [None] * depth  # type: ignore[list-item]
        grad_b: list[Tensor] = [None] * depth  # type: ignore[list-item]
        for layer in reversed(range(depth)):
            w, b, a = weights[layer], biases[layer], inputs[layer]
            grad_w[layer] = torch.bmm(delta.transpose(1, 2), a).add_(w * two_lam.view(-1, 1, 1))
            grad_b[layer] = delta.sum(1).add_(b * two_lam.view(-1, 1))
            if layer > 0:
                delta = torch.ops.aten.threshold_backward(torch.bmm(delta, w), a, 0)
    return objective, mse, norm_sq, grad_w + grad_b
