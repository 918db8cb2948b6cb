"""Deep linear networks for the linear-dynamics experiments (saddle-to-saddle, l2-linear).

    end_to_end(weights)        the learned matrix A = W_L ⋯ W_1 of every member, (E, d_out, d_in)
    train_dln(net, x, y, ...)  GD or SGD on the regularized objective, optionally on a mask of
                               observed target entries, recording A's spectrum at chosen steps
    log_steps(total, n)        ~n log-spaced record steps in 0..total
    plateaus(t, loss)          the flat stretches of a loss curve on log-log axes
    rank_jumps(ranks)          how often a rank sequence goes up and down
    device_option(name, spec, overrides)   the --device/--dtype overrides these experiments take

The objective of member e is C = fit + λ_e ‖θ‖² with fit = d_out · (mean squared error over the
target entries that count): every entry without a mask, which is bnrank's "sum" fit term
(1/N) Σ_i ‖f(x_i) − y_i‖²; only the observed ones with a mask (matrix completion), so a full
mask gives the same objective. SGD draws `batch_size` rows (or, with a mask, observed entries)
per step, cycling through random permutations, and uses the same formula on the batch.
Gradients come from torch autograd on the members' stacked weights (one batched product per
layer), in the network's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bnrank.errors import ConfigError, DataError, ModelError
from bnrank.models import EnsembleMLP


def device_option(experiment: str, spec, overrides):
    """`spec` (a preset dataclass with a `device` field) with ``device=cpu|cuda|auto`` from
    `overrides` applied; ``dtype=float64`` is accepted (these experiments train in float64),
    anything else is a ConfigError."""
    import dataclasses

    for item in overrides:
        key, _, value = item.partition("=")
        if key == "device" and value in ("cpu", "cuda", "auto"):
            device = value if value != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            spec = dataclasses.replace(spec, device=device)
        elif not (key == "dtype" and value == "float64"):
            raise ConfigError(f"{experiment} takes only device=cpu|cuda|auto and dtype=float64 overrides, got {item!r}")
    return spec


def end_to_end(weights) -> Tensor:
    """A = W_L ⋯ W_1 for stacked weights [(E, d_1, d_0), ..., (E, d_L, d_{L-1})] → (E, d_L, d_0)."""
    a = weights[0]
    for w in weights[1:]:
        a = torch.bmm(w, a)
    return a


def log_steps(total: int, n: int = 200) -> np.ndarray:
    """0 and about n steps spaced evenly in log between 1 and `total` (distinct, ascending, ending at total)."""
    return np.unique(np.concatenate([[0], np.round(np.geomspace(1, max(total, 1), n)).astype(int), [total]]))


@dataclass
class Trajectory:
    """What `train_dln` recorded at `steps` (T,): `fit` and `objective` (T, E) on the whole
    training set (all observed entries) and `singular_values` (T, E, min(d_out, d_in)) of A."""

    steps: np.ndarray
    fit: np.ndarray
    objective: np.ndarray
    singular_values: np.ndarray


def _fit(a: Tensor, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    """(E,) d_out · mean squared error of f(x) = A x over the entries that count."""
    err = (torch.matmul(x, a.transpose(1, 2)) - y).square()  # (E, N, d_out)
    if mask is None:
        return err.sum(-1).mean(-1)
    return y.shape[-1] * (err * mask).sum((1, 2)) / mask.sum()


def train_dln(net: EnsembleMLP, x: Tensor, y: Tensor, lam, lr, steps: int, record, *,
              mask: Tensor | None = None, batch_size: int | None = None, seed: int = 0) -> Trajectory:
    """Train the linear, bias-free `net` in place by GD (batch_size None) or SGD for `steps` steps
    at constant learning rates `lr` (one per member, or one for all) and penalties `lam`.

    x (N, d_in), y (N, d_out) shared by the members; `mask` (N, d_out) bool marks the observed
    entries of y; `record`: the steps (0..steps) at which the fit, objective and A's singular
    values are recorded; `seed` drives the minibatches."""
    if net.activation != "linear" or net.has_bias:
        raise ModelError(f"train_dln needs a linear net without biases, got {net.describe()}")
    ref = net.reference
    as_vec = lambda v: torch.as_tensor(v, dtype=ref.dtype, device=ref.device).expand(net.members).clone()  # noqa: E731
    lam_t, lr_t = as_vec(lam), as_vec(lr)
    x, y = x.to(ref), y.to(ref)
    if mask is not None:
        mask = mask.to(device=ref.device)
    record = sorted({int(s) for s in record if 0 <= s <= steps})
    gen = torch.Generator().manual_seed(seed)
    pool = torch.nonzero(mask) if mask is not None else torch.arange(x.shape[0])[:, None]
    if batch_size is not None and not 0 < batch_size <= len(pool):
        raise DataError(f"batch_size {batch_size} must be in 1..{len(pool)} (the rows or observed entries)")
    order, cursor = torch.randperm(len(pool), generator=gen), 0
    weights = [w.detach().requires_grad_(True) for w in net.weights]
    rows: dict[str, list] = {"fit": [], "objective": [], "sv": []}

    def measure() -> None:
        with torch.no_grad():
            a = end_to_end(weights)
            fit = _fit(a, x, y, mask)
            norm = sum(w.square().sum((1, 2)) for w in weights)
            rows["fit"].append(fit.cpu().numpy())
            rows["objective"].append((fit + lam_t * norm).cpu().numpy())
            finite = torch.isfinite(a).all(2).all(1)
            sv = torch.linalg.svdvals(torch.where(finite[:, None, None], a, 0.0).double())
            rows["sv"].append(torch.where(finite[:, None], sv, float("nan")).cpu().numpy())  # NaN: a diverged member

    targets = iter(record)
    nxt = next(targets, None)
    for step in range(steps + 1):
        if step == nxt:
            measure()
            nxt = next(targets, None)
        if step == steps:
            break
        if batch_size is None:
            xb, yb, mb = x, y, mask
        else:
            if cursor + batch_size > len(pool):
                order, cursor = torch.randperm(len(pool), generator=gen), 0
            idx = pool[order[cursor : cursor + batch_size]]
            cursor += batch_size
            if mask is None:
                xb, yb, mb = x[idx[:, 0]], y[idx[:, 0]], None
            else:  # one row per sampled entry, with only that entry counted
                xb, yb = x[idx[:, 0]], y[idx[:, 0]]
                mb = torch.zeros_like(yb, dtype=torch.bool)
                mb[torch.arange(len(idx)), idx[:, 1]] = True
        a = end_to_end(weights)
        norm = sum(w.square().sum((1, 2)) for w in weights)
        loss = (_fit(a, xb, yb, mb) + lam_t * norm).sum()
        grads = torch.autograd.grad(loss, weights)
        with torch.no_grad():
            for w, g in zip(weights, grads):
                w.sub_(lr_t[:, None, None] * g)
    with torch.no_grad():
        for p, w in zip(net.weights, weights):
            p.copy_(w)
    return Trajectory(np.array(record[: len(rows["fit"])]), np.stack(rows["fit"]), np.stack(rows["objective"]),
                      np.stack(rows["sv"]))


def plateaus(times, loss, slope_tol: float = 0.1, min_decades: float = 0.3) -> list[tuple[float, float, float]]:
    """The plateaus of a loss curve: maximal stretches of times > 0 over which the local slope
    d log(loss) / d log(t) (central differences) stays within ±slope_tol and which span at least
    `min_decades` decades of t. Returns (t_start, t_end, loss level = geometric mean over the
    stretch) per plateau, in time order. times ascending; loss > 0."""
    t, v = np.asarray(times, dtype=float), np.asarray(loss, dtype=float)
    keep = t > 0
    t, v = t[keep], v[keep]
    if len(t) < 3:
        return []
    if np.any(v <= 0) or not np.all(np.isfinite(v)):
        raise DataError("plateaus needs a positive finite loss")
    slope = np.gradient(np.log(v), np.log(t))
    flat = np.abs(slope) < slope_tol
    out = []
    i = 0
    while i < len(t):
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(t) and flat[j + 1]:
            j += 1
        if np.log10(t[j] / t[i]) >= min_decades:
            out.append((float(t[i]), float(t[j]), float(np.exp(np.log(v[i : j + 1]).mean()))))
        i = j + 1
    return out


def rank_jumps(ranks) -> tuple[int, int]:
    """(up, down): how many consecutive pairs of a rank sequence rise and how many fall (a jump
    of several ranks at once counts once)."""
    r = np.diff(np.asarray(ranks, dtype=int))
    return int(np.sum(r > 0)), int(np.sum(r < 0))
