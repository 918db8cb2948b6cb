"""Exact gradient of the regularized objective of an MLP ensemble, by hand-written backprop.

The trainer's hot path: one batched forward and one batched backward with no autograd graph.
Per layer the forward is one ``baddbmm`` (bias fused) and an in-place ReLU; the backward is two
``bmm`` (weight gradient, signal to the layer below) and one masking pass. Only the
post-activations a_ℓ = σ(α_ℓ) are kept (a_ℓ > 0 ⇔ α_ℓ > 0 gives the ReLU mask; a linear net
has no mask, a net without biases no bias terms). Equal to the generic torch.func gradient
(tests/test_backprop.py, tests/test_functional.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnrank.training.flat import FlatParameters
from bnrank.training.objective import MseReduction, mse_scale


class Workspace:
    """Buffers reused across calls of `objective_and_grads`, keyed by role, layer and shape.

    A CPU step that allocates its activations afresh page-faults on every touch of them (multi-MB
    allocations come straight from the OS), which cost ~20% of a step (bench/README.md); the
    trainer keeps one workspace per `fit`. Tensors returned by a call that used a workspace are
    overwritten by its next call.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}

    def get(self, role: str, layer: int, shape: torch.Size, like: Tensor) -> Tensor:
        key = (role, layer, tuple(shape), like.dtype, like.device)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return self._buffers[key]


def objective_and_grads(
    model, x: Tensor, y: Tensor, lam: Tensor, workspace: Workspace | None = None,
    reduction: MseReduction = "sum", flat: FlatParameters | None = None,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """(objective, mse, ‖θ‖², grads) for C = (1/N)Σ‖f(x_i) − y_i‖² + λ‖θ‖², per member
    (the squared error divided by d_out with reduction "mean", see `bnrank.training.objective`).

    x: (N, d_in) or (E, N, d_in); y: (N, d_out) or (E, N, d_out); lam: (E,).
    grads is ordered like ``model.parameters()``: dC/dW_1..dC/dW_L, then dC/db_1..dC/db_L (if the
    net has biases).
    With a `workspace`, activations and gradients live in its buffers (see `Workspace`); with
    `flat` (the model's parameters bound to it), the gradients are written to ``flat.grads``, so
    ``flat.grad`` holds them all.
    """
    ws = workspace if workspace is not None else Workspace()
    weights, biases = list(model.weights), model.bias_list()
    members, depth, relu = model.members, model.depth, model.activation == "relu"
    with torch.no_grad():
        a = x if x.dim() == 3 else x.expand(members, *x.shape)
        n = a.shape[1]
        inputs = []  # a_0 = x, a_ℓ = σ(α_ℓ): the input of layer ℓ + 1
        for layer, (w, b) in enumerate(zip(weights, biases)):
            inputs.append(a)
            out = ws.get("alpha", layer, (members, n, w.shape[1]), w)
            if b is None:
                a = torch.bmm(a, w.transpose(1, 2), out=out)
            else:
                a = torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2), out=out)
            if relu and layer < depth - 1:
                a.clamp_(min=0)
        residual = a.sub_(y)
        scale = mse_scale(reduction, residual.shape[-1])
        mse = residual.square().sum(-1).mean(-1) * scale
        norm_sq = model.param_norm_sq()
        objective = mse + lam * norm_sq
        two_lam = 2 * lam
        delta = residual.mul_(2.0 * scale / n)  # dC/dα_L: (E, N, d_out)
        grad_w: list[Tensor] = [None] * depth  # type: ignore[list-item]
        grad_b: list[Tensor] = []
        for layer in reversed(range(depth)):
            w, b, a = weights[layer], biases[layer], inputs[layer]
            out_w = flat.grads[layer] if flat is not None else ws.get("grad_w", layer, w.shape, w)
            grad_w[layer] = torch.bmm(delta.transpose(1, 2), a, out=out_w)
            grad_w[layer].addcmul_(w, two_lam.view(-1, 1, 1))
            if b is not None:
                out_b = flat.grads[depth + layer] if flat is not None else ws.get("grad_b", layer, b.shape, b)
                grad_b.insert(0, torch.sum(delta, 1, out=out_b).addcmul_(b, two_lam.view(-1, 1)))
            if layer > 0:
                below = torch.bmm(delta, w, out=ws.get("delta", layer, a.shape, w))
                delta = torch.ops.aten.threshold_backward.grad_input(below, a, 0, grad_input=below) if relu else below
    return objective, mse, norm_sq, grad_w + grad_b
