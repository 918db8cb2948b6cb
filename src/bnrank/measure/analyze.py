"""`analyze`: every quantity of the bottleneck theory (theory.md §4) as three tidy DataFrames."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from bnrank.atomic import write_parquet
from bnrank.errors import ConfigError, DataError, ModelError, StoreError
from bnrank.measure.activations import layer_inputs, nonlinearity_impact, post_activations, relative_rank, spectra
from bnrank.measure.curvature import hessian_top, ntk_top, ntk_trace
from bnrank.measure.jacobian import default_rtol, input_jacobians, jacobian_rank, jacobian_spectra, log_pdet, schatten
from bnrank.measure.weights import count_above, count_near_one, layer_budget, weight_spectra
from bnrank.models import EnsembleMLP
from bnrank.config import MseReduction
from bnrank.train.objective import mse_scale
from bnrank.train.rebalance import layer_balance_errors

MEASURE_DTYPE = torch.float64


@dataclass
class Analysis:
    """The measurements of an ensemble on inputs X (see `analyze` for the columns).

    timings: seconds spent on each stage (forward, weights, activations, jacobian, ntk_trace,
    ntk_top, hessian_top, assemble).
    """

    layers: pd.DataFrame
    points: pd.DataFrame
    network: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)

    def to_parquet(self, out: str | Path) -> dict[str, Path]:
        """Write layers.parquet, points.parquet, network.parquet into directory `out`, each atomically."""
        out = Path(out)
        return {name: write_parquet(out / f"{name}.parquet", getattr(self, name)) for name in ("layers", "points", "network")}


def analyze(
    model: EnsembleMLP | nn.Module | str | Path,
    X=None,
    threshold: float = 0.1,
    Y=None,
    lam: float | Sequence[float] | None = None,
    *,
    jac_rtol: float | None = None,
    curvature: bool = False,
    mse_reduction: str | None = None,
    device: torch.device | str | None = None,
) -> Analysis:
    """Measure weights, representations, input Jacobians and curvature of every member.

    model: an EnsembleMLP; any ``torch.nn.Module`` with Linear layers (its chain of Linear
    layers is measured by bnrank.measure.trace, which returns a ModuleAnalysis naming each
    layer's module and saying what is not measured, and why); a run directory (X defaults to its
    x_train, and then Y to its y_train; λ to its config's train.lam); or a model file (a bnrank
    checkpoint or a state dict of Linear layers: bnrank.checkpoint.load_model_file).
    X: inputs (N, d_in), a tensor or array. Y: targets (N, d_out), needed for the Hessian.
    lam: λ of the objective (one value or one per member; default 0, or the run's λ).
    mse_reduction: the objective's fit term, "sum" (1/N)Σ‖f − y‖² or "mean" (that / d_out); see
    bnrank.train.objective (default "sum", or the run's train.mse_reduction).
    threshold: singular values of W_ℓ above it count towards `rank` (the paper uses 0.1); the
    activation ranks use it relative to the largest singular value.
    jac_rtol: a singular value of Jf(x) counts as nonzero when it is > jac_rtol × the largest
    (default max(d_in, d_out) · float64 eps, numpy.linalg.matrix_rank's rule).
    curvature: also compute ntk_top and hessian_top (two Lanczos runs per member, 10 to 20
    network-sized products each: the slow part, off by default).
    device: where to compute (default: the model's device; a run directory or checkpoint is
    loaded on the CPU).

    Everything is computed in float64 on a copy of the parameters, on `device`; the
    SVDs of small matrices run on one CPU thread, the batched products on torch's thread count.

    ``layers``, one row per (member, layer ℓ = 1..L):
        member, layer, fan_in, fan_out; frob_sq = ‖W_ℓ‖_F²; bias_sq = ‖b_ℓ‖²;
        singular_values: all singular values of W_ℓ (float64 array, descending);
        rank: # singular values > threshold; near_one: # with |s − 1| < 0.25;
        act_singular_values: singular values of σ(α_ℓ(X)) (N × d_ℓ, uncentered; for ℓ = L the
        output α_L(X), which has no σ); act_rank: # of them > threshold × the largest;
        preact_rank: the same for α_ℓ(X);
        nonlin_impact = ‖σ(α_ℓ) − α_ℓ‖_F / ‖α_ℓ‖_F over X (NaN for ℓ = L);
        balance_error: Σ_i |c_i − a_i| / Σ_i (c_i + a_i) over the hidden neurons after W_ℓ,
        a_i / c_i their incoming / outgoing squared norms (NaN for ℓ = L);
        budget = Σ_{i≤k} (s_i² − 1 − log s_i²) + Σ_{i>k} s_i², k = the member's jac_rank.
    ``points``, one row per (member, input index `point`):
        jac_singular_values: singular values of Jf(x) (d_out × d_in), descending;
        jac_rank: # of them > jac_rtol × the largest; log_pdet = Σ_{i ≤ jac_rank} log s_i
        (log pseudo-determinant; 0 at rank 0); schatten = L·Σ_{i ≤ jac_rank} s_i^{2/L} (≤ ‖θ‖² always);
        ntk_trace = Σ_θ ‖∂f(x)/∂θ‖², summed over outputs; sq_error = ‖f(x) − y‖² (NaN without Y).
    ``network``, one row per member:
        depth, param_norm_sq = ‖θ‖² (weights and biases); jac_rank = max over points;
        budget_point: the point with rank jac_rank and the largest log_pdet;
        r1_lower_bound = 2·log_pdet there (≤ R⁽¹⁾ if jac_rank = R⁽⁰⁾);
        budget_lhs = Σ_ℓ budget_ℓ; budget_rhs = ‖θ‖² − jac_rank·L − r1_lower_bound (the smallest
        right-hand side over points of that rank; budget_lhs ≤ budget_rhs holds for any parameters);
        schatten_max = max over points of schatten (≤ param_norm_sq);
        ntk_top = λ_max(Θ)/N of the (N·d_out)² NTK Gram matrix (NaN unless curvature);
        hessian_top = λ_max of the Hessian of (1/N)Σ‖f(x_i) − y_i‖² + λ‖θ‖² (NaN without Y or curvature);
        lam, mse, objective = mse + λ‖θ‖² (NaN without Y).
    """
    if isinstance(model, nn.Module) and not isinstance(model, EnsembleMLP):
        from bnrank.measure.trace import analyze_module

        return analyze_module(model, X, threshold, Y, lam, jac_rtol=jac_rtol, curvature=curvature,
                              mse_reduction=mse_reduction, device=device)
    net, x, y, lams, reduction = _resolve(model, X, Y, lam, mse_reduction, device)
    scale = mse_scale(reduction, net.dims[-1])
    clock = _Clock()
    W, B = [w.detach() for w in net.weights], [b.detach() for b in net.biases]
    E, L, N = net.members, net.depth, x.shape[0]
    with torch.no_grad():
        preacts = net.preactivations(x)
        inputs = layer_inputs(x, preacts)
        clock.lap("forward")

        with _one_thread():
            wspec = weight_spectra(W)
        clock.lap("weights")

        with _one_thread():
            aspec = spectra(post_activations(preacts))
            pspec = spectra(preacts)
        act_rank = torch.stack([relative_rank(s, threshold) for s in aspec], 1)
        preact_rank = torch.stack([relative_rank(s, threshold) for s in pspec], 1)
        impact = nonlinearity_impact(preacts)
        clock.lap("activations")

        jac = input_jacobians(W, preacts)
        with _one_thread():
            jspec = jacobian_spectra(jac.jac)
        rtol = default_rtol(net.dims[0], net.dims[-1], MEASURE_DTYPE) if jac_rtol is None else jac_rtol
        jrank = jacobian_rank(jspec, rtol)
        lpd = log_pdet(jspec, jrank)
        sch = schatten(jspec, jrank, L)
        clock.lap("jacobian")

        trace = ntk_trace(inputs, jac.grad_sq)
        clock.lap("ntk_trace")

        nan = x.new_full((E,), float("nan"))
        top_ntk = ntk_top(W, inputs, preacts) if curvature else nan
        clock.lap("ntk_top")
        top_hess = hessian_top(W, inputs, preacts, y, lams, scale) if curvature and y is not None else nan
        clock.lap("hessian_top")

        k = jrank.max(1).values
        candidates = torch.where(jrank == k[:, None], 2 * lpd, float("-inf"))
        r1, point = candidates.max(1)
        budget = torch.stack([layer_budget(s, k) for s in wspec], 1)  # (E, L)
        norm_sq = net.param_norm_sq()
        balance = torch.cat([layer_balance_errors(net), nan[:, None]], 1)
        sq_error = (preacts[-1] - y).square().sum(-1) if y is not None else x.new_full((E, N), float("nan"))
        mse = sq_error.mean(1) * scale
        lam_t = torch.tensor(lams, dtype=MEASURE_DTYPE, device=x.device)

        layers = pd.DataFrame({
            "member": np.repeat(np.arange(E), L),
            "layer": np.tile(np.arange(1, L + 1), E),
            "fan_in": np.tile(net.dims[:-1], E),
            "fan_out": np.tile(net.dims[1:], E),
            "frob_sq": _np(torch.stack([w.square().sum((1, 2)) for w in W], 1)).ravel(),
            "bias_sq": _np(torch.stack([b.square().sum(1) for b in B], 1)).ravel(),
            "singular_values": _arrays(wspec),
            "rank": _np(torch.stack([count_above(s, threshold) for s in wspec], 1)).ravel(),
            "near_one": _np(torch.stack([count_near_one(s) for s in wspec], 1)).ravel(),
            "act_singular_values": _arrays(aspec),
            "act_rank": _np(act_rank).ravel(),
            "preact_rank": _np(preact_rank).ravel(),
            "nonlin_impact": _np(impact).ravel(),
            "balance_error": _np(balance).ravel(),
            "budget": _np(budget).ravel(),
        })
        points = pd.DataFrame({
            "member": np.repeat(np.arange(E), N),
            "point": np.tile(np.arange(N), E),
            "jac_singular_values": list(_np(jspec).reshape(E * N, -1)),
            "jac_rank": _np(jrank).ravel(),
            "log_pdet": _np(lpd).ravel(),
            "schatten": _np(sch).ravel(),
            "ntk_trace": _np(trace).ravel(),
            "sq_error": _np(sq_error).ravel(),
        })
        network = pd.DataFrame({
            "member": np.arange(E),
            "depth": L,
            "param_norm_sq": _np(norm_sq),
            "jac_rank": _np(k),
            "budget_point": _np(point),
            "r1_lower_bound": _np(r1),
            "budget_lhs": _np(budget.sum(1)),
            "budget_rhs": _np(norm_sq - k * L - r1),
            "schatten_max": _np(sch.max(1).values),
            "ntk_top": _np(top_ntk),
            "hessian_top": _np(top_hess),
            "lam": _np(lam_t),
            "mse": _np(mse),
            "objective": _np(mse + lam_t * norm_sq),
        })
        clock.lap("assemble")
    return Analysis(layers, points, network, clock.laps)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run LAPACK on small matrices single-threaded (threading them gains little, and on a
    shared CPU it is many times slower); the thread count is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._t
        self._t = now


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _arrays(per_layer: Sequence[Tensor]) -> list[np.ndarray]:
    """Per-layer (E, m_ℓ) spectra → one float64 array per (member, layer), member-major."""
    host = [_np(s) for s in per_layer]
    return [host[layer][e] for e in range(host[0].shape[0]) for layer in range(len(host))]


# -- input resolution -------------------------------------------------------------------------------


def _resolve(model, X, Y, lam, reduction, device) -> tuple[EnsembleMLP, Tensor, Tensor | None, list[float], str]:
    """(float64 copy of the ensemble on `device` (None: its own), x, y or None, λ per member,
    mse reduction)."""
    run_lam = run_reduction = None
    if isinstance(model, (str, Path)):
        model, X, Y, run_lam, run_reduction = _load(Path(model), X, Y)
    if isinstance(model, EnsembleMLP):
        to = dict(dtype=MEASURE_DTYPE, device=device)
        net = EnsembleMLP([w.detach().to(**to) for w in model.weights], [b.detach().to(**to) for b in model.biases])
    else:
        raise ModelError(
            f"cannot analyze a {type(model).__name__}: pass an EnsembleMLP, a torch.nn.Module with Linear "
            "layers, or the path of a run directory or model file"
        )
    device = net.weights[0].device
    if X is None:
        raise DataError("analyze needs inputs X (N, d_in) unless the model is a run directory")
    x = _matrix(X, "X", net.dims[0], device)
    y = None if Y is None else _matrix(Y, "Y", net.dims[-1], device)
    if y is not None and y.shape[0] != x.shape[0]:
        raise DataError(f"Y has {y.shape[0]} rows but X has {x.shape[0]}")
    lam = run_lam if lam is None else lam
    lams = [0.0] * net.members if lam is None else _per_member(lam, net.members)
    reduction = reduction or run_reduction or "sum"
    if reduction not in get_args(MseReduction):
        raise ConfigError(f"mse_reduction must be 'sum' or 'mean', got {reduction!r}")
    return net, x, y, lams, reduction


def _load(path: Path, X, Y):
    """(model, X, Y, λ, mse reduction) from a run directory (its training data, λ and reduction
    unless given) or a model file (λ and reduction None)."""
    from bnrank.checkpoint import load_model_file
    from bnrank.runs import load_run

    if path.is_dir():
        run = load_run(path)
        if X is None:
            X = run.task.x_train
            Y = run.task.y_train if Y is None else Y
        return run.model, X, Y, run.config.train.lam, run.config.train.mse_reduction
    if path.is_file():
        return load_model_file(path, dtype=MEASURE_DTYPE), X, Y, None, None
    raise StoreError(f"no run directory or checkpoint at {path}")


def _matrix(a, name: str, width: int, device) -> Tensor:
    """A finite float64 (N, width) tensor with N ≥ 1, else DataError."""
    try:
        t = a.detach() if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} is not a numeric array: {err}") from None
    if t.dim() != 2 or t.shape[1] != width or t.shape[0] == 0:
        raise DataError(f"{name} must have shape (N, {width}) with N ≥ 1, got {tuple(t.shape)}")
    t = t.to(device=device, dtype=MEASURE_DTYPE)
    if not torch.isfinite(t).all():
        raise DataError(f"{name} contains NaN or inf")
    return t


def _per_member(lam, members: int) -> list[float]:
    values = [float(lam)] * members if np.ndim(lam) == 0 else [float(v) for v in lam]
    if len(values) != members:
        raise DataError(f"lam has {len(values)} values for {members} members")
    if not all(np.isfinite(v) and v >= 0 for v in values):
        raise DataError(f"lam must be finite and ≥ 0, got {values}")
    return values
