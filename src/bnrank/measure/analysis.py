"""`analyze`: every quantity of the bottleneck theory (docs/theory.md §4) as three tidy DataFrames."""

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
from bnrank.config import MseReduction
from bnrank.memory import analyze_estimate, check_memory
from bnrank.measure.activations import nonlinearity_impact, relative_rank, spectra
from bnrank.measure.curvature import hessian_top, ntk_top, ntk_trace
from bnrank.measure.jacobian import default_rtol, input_jacobians, jacobian_rank, jacobian_spectra, log_pdet, schatten
from bnrank.measure.weights import count_above, count_near_one, layer_budget, weight_spectra
from bnrank.models import HOMOGENEOUS, LAYERED_PRODUCT, EnsembleModel
from bnrank.models.functional import ntk_trace as functional_ntk_trace
from bnrank.training.objective import mse_scale

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
    model: EnsembleModel | nn.Module | str | Path,
    X=None,
    threshold: float = 0.1,
    Y=None,
    lam: float | Sequence[float] | None = None,
    *,
    jac_rtol: float | None = None,
    curvature: bool = False,
    mse_reduction: str | None = None,
    device: torch.device | str | None = None,
    max_memory: int | None = None,
) -> Analysis:
    """Measure weights, representations, input Jacobians and curvature of every member.

    Rows of ``layers`` are the family's layer keys (bnrank.models.LayerKey): the `operator` whose
    spectrum is taken and the representation `site` after it; quantities that need a
    capability the family lacks (HOMOGENEOUS: balance_error, budget, schatten and the budget
    bounds) are NaN, and `curvature` needs LAYERED_PRODUCT.

    model: an ensemble of any model family (an EnsembleModel, e.g. EnsembleMLP); any
    ``torch.nn.Module`` with Linear layers (its chain of Linear layers is measured by
    bnrank.measure.trace, which returns a ModuleAnalysis naming each layer's module and saying
    what is not measured, and why); a run directory (X defaults to its x_train, and then Y to its
    y_train; λ to its config's train.lam); or a model file (a bnrank checkpoint or a state dict
    of Linear layers: bnrank.checkpoint.load_model_file).
    X: inputs (N, d_in), a tensor or array. Y: targets (N, d_out), needed for the Hessian.
    lam: λ of the objective (one value or one per member; default 0, or the run's λ).
    mse_reduction: the objective's fit term, "sum" (1/N)Σ‖f − y‖² or "mean" (that / d_out); see
    bnrank.training.objective (default "sum", or the run's train.mse_reduction).
    threshold: singular values of W_ℓ above it count towards `rank` (the paper uses 0.1); the
    activation ranks use it relative to the largest singular value.
    jac_rtol: a singular value of Jf(x) counts as nonzero when it is > jac_rtol × the largest
    (default max(d_in, d_out) · float64 eps, numpy.linalg.matrix_rank's rule).
    curvature: also compute ntk_top and hessian_top (two Lanczos runs per member, 10 to 20
    network-sized products each: the slow part, off by default).
    device: where to compute (default: the model's device; a run directory or checkpoint is
    loaded on the CPU).
    max_memory: bytes the measurement may take; its estimate (bnrank.memory) is checked against
    it, or without it against the memory the device has available, before the measurement starts
    (ConfigError when it does not fit).

    Everything is computed in float64 on a copy of the parameters, on `device`; the
    SVDs of small matrices run on one CPU thread, the batched products on torch's thread count.

    ``layers``, one row per (member, layer key; for an MLP layer ℓ = 1..L):
        member, layer; operator (the weight operator's name, "weight.ℓ" for an MLP) and site
        (the representation's, "alpha.ℓ"); fan_in, fan_out; frob_sq = ‖W_ℓ‖_F²; bias_sq = ‖b_ℓ‖²
        (0 without biases);
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
        lam, mse, objective = mse + λ‖θ‖² (NaN without Y);
        diverged: whether the member's parameters hold NaN or inf. Such a member is not
        measured: it has a network row (member, depth, lam, diverged = True, the rest NaN) and no
        layers or points rows. When no member is finite, ModelError.
    """
    if isinstance(model, nn.Module) and not isinstance(model, EnsembleModel):
        from bnrank.measure.trace import analyze_module

        return analyze_module(model, X, threshold, Y, lam, jac_rtol=jac_rtol, curvature=curvature,
                              mse_reduction=mse_reduction, device=device)
    net, x, y, lams, reduction = _resolve(model, X, Y, lam, mse_reduction, device)
    widths = [net.d_in] + [op.shape[1] for op in net.operators().values()]
    check_memory(analyze_estimate(net.members, widths, x.shape[0], curvature), "analyze", max_memory, x.device)
    if curvature:
        net.require(LAYERED_PRODUCT, "analyze's curvature (ntk_top, hessian_top)")
    finite = finite_members(net)
    if not all(finite):
        return _with_diverged(net, finite, x, threshold, y, lams, jac_rtol, curvature, reduction)
    homogeneous, layered = net.has(HOMOGENEOUS), net.has(LAYERED_PRODUCT)
    scale = mse_scale(reduction, net.d_out)
    clock = _Clock()
    keys = net.layer_keys()
    tensors = {k: v.detach() for k, v in net.tensors().items()}
    ops = {k: v.detach() for k, v in net.operators().items()}
    E, L, N = net.members, net.depth, x.shape[0]
    with torch.no_grad():
        sites = {site.name: site for site in net.sites(x)}
        clock.lap("forward")

        with _one_thread():
            spectra_by_op = dict(zip(ops, weight_spectra(list(ops.values()))))
        wspec = [spectra_by_op[k.operator] for k in keys]
        clock.lap("weights")

        rows = [sites[k.site] for k in keys]
        with _one_thread():
            aspec = spectra([site.post for site in rows])
            pspec = spectra([site.pre for site in rows])
        act_rank = torch.stack([relative_rank(s, threshold) for s in aspec], 1)
        preact_rank = torch.stack([relative_rank(s, threshold) for s in pspec], 1)
        impact = nonlinearity_impact(rows)
        clock.lap("activations")

        nan = x.new_full((E,), float("nan"))
        if layered:
            preacts = [site.pre for site in sites.values()]
            jac = input_jacobians(list(ops.values()), preacts, net.activation)
            jac_mats = jac.jac
        else:
            jac_mats = net.input_jacobians(x)
        with _one_thread():
            jspec = jacobian_spectra(jac_mats)
        rtol = default_rtol(net.d_in, net.d_out, MEASURE_DTYPE) if jac_rtol is None else jac_rtol
        jrank = jacobian_rank(jspec, rtol)
        lpd = log_pdet(jspec, jrank)
        sch = schatten(jspec, jrank, L) if homogeneous else jspec.new_full(jrank.shape, float("nan"))
        clock.lap("jacobian")

        if layered:
            inputs = [x.expand(E, *x.shape)] + [site.post for site in list(sites.values())[:-1]]
            trace = ntk_trace(inputs, jac.grad_sq, net.has_bias)
        else:
            trace = functional_ntk_trace(net, x)
        clock.lap("ntk_trace")

        relu = layered and net.activation == "relu"
        weights = list(ops.values())
        top_ntk = ntk_top(weights, inputs, preacts, relu, net.has_bias) if curvature else nan
        clock.lap("ntk_top")
        top_hess = hessian_top(weights, inputs, preacts, y, lams, scale, relu, net.has_bias) if curvature and y is not None else nan
        clock.lap("hessian_top")

        k = jrank.max(1).values
        candidates = torch.where(jrank == k[:, None], 2 * lpd, float("-inf"))
        r1, point = candidates.max(1)
        norm_sq = net.param_norm_sq()
        if homogeneous:
            budget = torch.stack([layer_budget(s, k) for s in wspec], 1)  # (E, L)
            balance = torch.cat([net.layer_balance_errors(), nan[:, None]], 1)
            budget_lhs, budget_rhs, schatten_max = budget.sum(1), norm_sq - k * L - r1, sch.max(1).values
        else:
            budget = balance = x.new_full((E, len(keys)), float("nan"))
            budget_lhs = budget_rhs = schatten_max = nan
        out = list(sites.values())[-1].pre
        sq_error = (out - y).square().sum(-1) if y is not None else x.new_full((E, N), float("nan"))
        mse = sq_error.mean(1) * scale
        lam_t = torch.tensor(lams, dtype=MEASURE_DTYPE, device=x.device)
        zero = x.new_zeros(E)
        bias_sq = [tensors[key.bias].square().flatten(1).sum(1) if key.bias else zero for key in keys]

        n_rows = len(keys)
        layers = pd.DataFrame({
            "member": np.repeat(np.arange(E), n_rows),
            "layer": np.tile([key.layer for key in keys], E),
            "operator": np.tile([key.operator for key in keys], E),
            "site": np.tile([key.site for key in keys], E),
            "fan_in": np.tile([ops[key.operator].shape[2] for key in keys], E),
            "fan_out": np.tile([ops[key.operator].shape[1] for key in keys], E),
            "frob_sq": _np(torch.stack([ops[key.operator].square().sum((1, 2)) for key in keys], 1)).ravel(),
            "bias_sq": _np(torch.stack(bias_sq, 1)).ravel(),
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
            "budget_lhs": _np(budget_lhs),
            "budget_rhs": _np(budget_rhs),
            "schatten_max": _np(schatten_max),
            "ntk_top": _np(top_ntk),
            "hessian_top": _np(top_hess),
            "lam": _np(lam_t),
            "mse": _np(mse),
            "objective": _np(mse + lam_t * norm_sq),
            "diverged": False,
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


def finite_members(net: EnsembleModel) -> list[bool]:
    """Per member: whether all its parameters (each (E, ...)) are finite."""
    ok = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in net.parameters()]).all(0)
    return ok.tolist()


def _with_diverged(net, finite, x, threshold, y, lams, jac_rtol, curvature, reduction) -> Analysis:
    """`analyze` of the finite members, renumbered as in `net`, plus a diverged network row for each other one."""
    keep = [e for e, ok in enumerate(finite) if ok]
    if not keep:
        raise ModelError(f"every member ({net.members}) has NaN or inf parameters: nothing to analyze")
    part = analyze(net.select(keep), x, threshold, y, [lams[e] for e in keep], jac_rtol=jac_rtol, curvature=curvature,
                   mse_reduction=reduction)
    for table in (part.layers, part.points, part.network):
        table["member"] = np.asarray(keep)[table["member"].to_numpy()]
    bad = [e for e, ok in enumerate(finite) if not ok]
    rows = pd.DataFrame({"member": bad, "depth": net.depth, "lam": [lams[e] for e in bad], "diverged": True})
    network = pd.concat([part.network, rows], ignore_index=True).sort_values("member", ignore_index=True)
    return Analysis(part.layers, part.points, network, part.timings)


# -- input resolution -------------------------------------------------------------------------------


def _resolve(model, X, Y, lam, reduction, device) -> tuple[EnsembleModel, Tensor, Tensor | None, list[float], str]:
    """(float64 copy of the ensemble on `device` (None: its own), x, y or None, λ per member,
    mse reduction)."""
    run_lam = run_reduction = None
    if isinstance(model, (str, Path)):
        model, X, Y, run_lam, run_reduction = _load(Path(model), X, Y)
    if isinstance(model, EnsembleModel):
        to = dict(dtype=MEASURE_DTYPE, device=device or model.reference.device)
        net = type(model).from_tensors({k: v.detach().to(**to) for k, v in model.tensors().items()}, model.metadata())
    else:
        raise ModelError(
            f"cannot analyze a {type(model).__name__}: pass an ensemble of a bnrank model family, a torch.nn.Module "
            "with Linear layers, or the path of a run directory or model file"
        )
    device = net.reference.device
    if X is None:
        raise DataError("analyze needs inputs X (N, d_in) unless the model is a run directory")
    x = _matrix(X, "X", net.d_in, device)
    y = None if Y is None else _matrix(Y, "Y", net.d_out, device)
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
    if (a.is_complex() if isinstance(a, Tensor) else np.iscomplexobj(a)):
        raise DataError(f"{name} holds complex numbers: inputs and targets must be real")
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
