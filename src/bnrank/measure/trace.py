"""analyze for any nn.Module: find its chain of Linear layers and measure it.

`trace_chain(module, x)` finds the longest chain Linear → op → Linear → ... → Linear in the
module's computation, by torch.fx symbolic tracing or, where that fails (data-dependent
control flow), by forward hooks and the order the layers are called in on x. Each link records
the op between two layers: "relu", "identity" (nothing between them), "leaky_relu" (with its
negative slope), or the name of anything else ("tanh", "BatchNorm1d", ...). Dropout and
Identity modules count as nothing (the module is measured in eval mode).

`analyze_module(module, X, ...)` measures the chain on the inputs of its first layer (the
module's prefix, if any, maps X to them; the chain's output is its last layer's output):

- ReLU between every two layers: the chain is converted to an EnsembleMLP and measured by
  bnrank.analyze, so the tables equal those of the equivalent nn.Sequential.
- Otherwise the quantities that do not rest on positive homogeneity are given, the weight and
  representation spectra (from hooks), nonlin_impact, the chain's input Jacobians
  (torch.func.jacrev) with their ranks and log pseudo-determinants, ‖θ‖², mse and objective;
  the others (HOMOGENEOUS_COLUMNS) are NaN, and the `unsupported` table says, per layer, why.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrank.atomic import write_parquet
from bnrank.errors import DataError, ModelError
from bnrank.measure.activations import relative_rank, spectra
from bnrank.measure.analysis import MEASURE_DTYPE, Analysis, _arrays, _matrix, _np, _one_thread, _per_member, analyze
from bnrank.measure.jacobian import default_rtol, jacobian_rank, jacobian_spectra, log_pdet
from bnrank.measure.weights import count_above, count_near_one, weight_spectra
from bnrank.models import EnsembleMLP
from bnrank.training.objective import mse_scale

PASS_THROUGH = (nn.Dropout, nn.Identity)
"""Modules that are the identity in eval mode; they do not break a chain."""

PREFIX_NOTE = "ops before it map the module's input to the chain's input; the chain is measured on those inputs"

HOMOGENEOUS_COLUMNS = {
    "layers": ["balance_error", "budget"],
    "points": ["schatten", "ntk_trace"],
    "network": ["r1_lower_bound", "budget_lhs", "budget_rhs", "schatten_max", "ntk_top", "hessian_top"],
}
"""Columns measured for ReLU chains only: they rest on the rescaling symmetry of a positively
homogeneous activation (balance, budget, the Schatten and R⁽¹⁾ bounds) or on ReLU's exact
linearization (NTK trace and top, Hessian top)."""

NOT_HOMOGENEOUS = {"tanh", "sigmoid", "gelu", "silu", "elu", "selu", "softplus", "mish", "hardtanh", "softsign"}
"""Elementwise activations (lower-cased names) that are not positively homogeneous."""

_RELU_FUNCTIONS = {torch.relu, F.relu, torch.relu_, F.relu_}
_LEAKY_FUNCTIONS = {F.leaky_relu, F.leaky_relu_}


@dataclass(frozen=True)
class ChainLayer:
    """One Linear layer of a chain: its module path, the module, and the op applied to its
    output before the next layer (`activation`; None for the chain's last layer), with
    `negative_slope` for "leaky_relu"."""

    path: str
    linear: nn.Linear
    activation: str | None
    negative_slope: float | None = None


@dataclass
class Chain:
    """The analysed chain; `prefix`: whether ops map the module's input to the first layer's
    input; `notes`: (module, reason) on what lies outside the chain or ends it."""

    layers: list[ChainLayer]
    prefix: bool = False
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def relu(self) -> bool:
        """Whether ReLU sits between every two layers (the chain is an EnsembleMLP)."""
        return all(layer.activation == "relu" for layer in self.layers[:-1])


# -- tracing --------------------------------------------------------------------------------------


def trace_chain(module: nn.Module, x: Tensor | None = None) -> Chain:
    """The longest chain of nn.Linear layers of `module` (see the module doc); `x`, inputs the
    module accepts, is needed only where symbolic tracing fails. ModelError without a Linear layer."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as err:  # fx fails on data-dependent control flow, in many ways
        if x is None:
            raise ModelError(f"{type(module).__name__} cannot be traced symbolically ({type(err).__name__}) and no inputs were given") from None
        return _hooks_chain(module, x, f"symbolic tracing failed ({type(err).__name__}): the chain was found by forward hooks")
    return _fx_chain(gm)


def _describe(gm, node) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} ({node.target})"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _classify_node(gm, node) -> tuple[str | None, float | None]:
    """(op name, negative slope) of a single-input node: None for a pass-through."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, PASS_THROUGH):
            return None, None
        if isinstance(mod, nn.ReLU):
            return "relu", None
        if isinstance(mod, nn.LeakyReLU):
            return "leaky_relu", float(mod.negative_slope)
        return type(mod).__name__, None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            return "relu", None
        if node.target in _LEAKY_FUNCTIONS:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return "leaky_relu", float(slope)
        if node.target is F.dropout and node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True) is False:
            return None, None
        return getattr(node.target, "__name__", str(node.target)), None
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return "relu", None
        if node.target in ("contiguous", "clone"):
            return None, None
        return str(node.target), None
    return str(node.op), None


def _activation(names: list[tuple[str | None, float | None]]) -> tuple[str, float | None]:
    """The op between two layers from the ops met on the way (pass-throughs dropped)."""
    ops = [(name, slope) for name, slope in names if name is not None]
    if not ops:
        return "identity", None
    if len(ops) == 1:
        return ops[0]
    return "+".join(name for name, _ in ops), None


def _fx_chain(gm) -> Chain:
    linears = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Linear)]
    if not linears:
        raise ModelError(f"no nn.Linear layer in {type(gm).__name__.removesuffix('GraphModule') or 'the module'}")
    is_linear = set(linears)
    links, notes = {}, {}
    for node in linears:
        cur, ops = node, []
        while True:
            users = list(cur.users)
            if len(users) != 1:
                if len(users) > 1:
                    after = f" after {', '.join(_describe(gm, op) for op in ops)}" if ops else ""
                    notes[node] = f"its output{after} feeds {len(users)} ops ({', '.join(_describe(gm, u) for u in users)}): the chain ends here"
                break
            user = users[0]
            if user.op == "output":
                break
            if user.all_input_nodes != [cur]:
                notes[node] = f"{_describe(gm, user)} combines its output with other tensors: the chain ends here"
                break
            if user in is_linear:
                links[node] = (user, _activation([_classify_node(gm, op) for op in ops]))
                break
            ops.append(user)
            cur = user
        if node not in links and ops and node not in notes:
            notes[node] = f"followed by {', '.join(_describe(gm, op) for op in ops)}, outside the analysed chain"
    heads = [n for n in linears if n not in {nxt for nxt, _ in links.values()}]
    chains = []
    for head in heads:
        chain = [head]
        while chain[-1] in links:
            chain.append(links[chain[-1]][0])
        chains.append(chain)
    best = max(chains, key=len)
    targets = [node.target for node in best]
    if len(set(targets)) != len(targets):
        shared = next(t for t in targets if targets.count(t) > 1)
        raise ModelError(f"{shared} is called more than once (shared weights): not a chain of Linear layers")
    layers = []
    for node in best:
        activation, slope = links[node][1] if node in links else (None, None)
        layers.append(ChainLayer(node.target, gm.get_submodule(node.target), activation, slope))
    first_input = best[0].all_input_nodes
    prefix = not (len(first_input) == 1 and first_input[0].op == "placeholder")
    out = [(best[0].target, PREFIX_NOTE)] if prefix else []
    out += [(n.target, reason) for n, reason in notes.items() if n is best[-1]]
    out += [(n.target, "not in the analysed chain (the longest one)") for n in linears if n not in best]
    return Chain(layers, prefix, out)


def _hooks_chain(module: nn.Module, x: Tensor, note: str) -> Chain:
    """The chain from the order the leaf modules are called in on `x` (functional ops are
    invisible to hooks: between two layers without a module call, the op is read off the
    values, identity or ReLU, else reported as unknown)."""
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    handles = []
    for path, mod in module.named_modules():
        if not list(mod.children()):
            handles.append(mod.register_forward_hook(
                lambda m, args, out, path=path: calls.append((path, m, args[0] if args else None, out))))
    _call_hooked(module, x, handles)
    lin = [i for i, c in enumerate(calls) if isinstance(c[1], nn.Linear)]
    if not lin:
        raise ModelError(f"no nn.Linear layer is called by {type(module).__name__}")
    paths = [calls[i][0] for i in lin]
    if len(set(paths)) != len(paths):
        shared = next(p for p in paths if paths.count(p) > 1)
        raise ModelError(f"{shared} is called more than once (shared weights): not a chain of Linear layers")
    layers = []
    for k, i in enumerate(lin):
        path, mod = calls[i][0], calls[i][1]
        if k == len(lin) - 1:
            layers.append(ChainLayer(path, mod, None))
            continue
        between = [c for c in calls[i + 1 : lin[k + 1]] if not isinstance(c[1], PASS_THROUGH)]
        prev_out, next_in = calls[i][3], calls[lin[k + 1]][2]
        activation, slope = _value_activation(prev_out, next_in, between)
        layers.append(ChainLayer(path, mod, activation, slope))
    prefix = calls[lin[0]][2] is not x
    return Chain(layers, prefix, [(paths[0], note)] + ([(paths[0], PREFIX_NOTE)] if prefix else []))


def _value_activation(prev_out: Tensor, next_in: Tensor, between) -> tuple[str, float | None]:
    """The op between two layers seen by hooks: the modules called between them when their
    values connect the two layers, else identity or ReLU read off the values, else "unknown"."""
    if between:
        connected = between[0][2] is not None and torch.equal(between[0][2], prev_out) and torch.equal(between[-1][3], next_in)
        if connected:
            names = [("relu", None) if isinstance(m, nn.ReLU) else ("leaky_relu", float(m.negative_slope))
                     if isinstance(m, nn.LeakyReLU) else (type(m).__name__, None) for _, m, _, _ in between]
            return _activation(names)
    elif next_in.shape == prev_out.shape:
        if torch.equal(next_in, prev_out):
            return "identity", None
        if torch.equal(next_in, torch.relu(prev_out)):
            return "relu", None
    return "unknown (functional op not seen by hooks)", None


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class ModuleAnalysis(Analysis):
    """`analyze` of an nn.Module: the Analysis tables (layers / points / network, see
    bnrank.measure.analyze) of its chain, plus `modules` (layer → module path, shape, the op after
    it) and `unsupported` (module, quantities, reason: what is not measured, and why)."""

    modules: pd.DataFrame = field(default_factory=pd.DataFrame)
    unsupported: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["module", "quantities", "reason"]))

    def to_parquet(self, out: str | Path) -> dict[str, Path]:
        """Write the five tables as Parquet files into directory `out`, each atomically."""
        names = ("layers", "points", "network", "modules", "unsupported")
        return {name: write_parquet(Path(out) / f"{name}.parquet", getattr(self, name)) for name in names}


def _homogeneous_note(layer: ChainLayer, after: ChainLayer) -> str:
    """Why the ReLU-chain quantities are not given for `layer`, followed by `after`."""
    op = layer.activation
    if op in ("identity", "leaky_relu"):
        slope = "" if layer.negative_slope is None else f"({layer.negative_slope:g})"
        return f"{op}{slope} between {layer.path} and {after.path} is positively homogeneous, but these are measured for ReLU chains only"
    if op.lower() in NOT_HOMOGENEOUS:
        return f"{op} between {layer.path} and {after.path} is not positively homogeneous"
    return f"{op} between {layer.path} and {after.path} is not an elementwise positively homogeneous activation"


def analyze_module(module: nn.Module, X, threshold: float = 0.1, Y=None, lam=None, *, jac_rtol: float | None = None,
                   curvature: bool = False, mse_reduction: str | None = None, device=None) -> ModuleAnalysis:
    """bnrank.analyze of any nn.Module (arguments as there): its Linear chain measured on X, on
    a float64 copy in eval mode (a lone nn.Linear is the chain of one layer "0")."""
    if X is None:
        raise DataError("analyze needs inputs X for an nn.Module")
    try:
        x = (X.detach() if isinstance(X, Tensor) else torch.as_tensor(np.asarray(X, dtype=np.float64)))
    except (TypeError, ValueError) as err:
        raise DataError(f"X is not a numeric array: {err}") from None
    if device is None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        net_module = copy.deepcopy(nn.Sequential(module) if isinstance(module, nn.Linear) else module)
    except Exception as err:  # deepcopy fails on some attributes (open files, locks, ...)
        raise ModelError(f"cannot copy the {type(module).__name__} to measure it in float64 ({type(err).__name__}: {err})") from None
    net_module = net_module.to(device=device, dtype=MEASURE_DTYPE).eval()
    x = x.to(device=device, dtype=MEASURE_DTYPE)
    if x.dim() == 0 or x.shape[0] == 0 or not torch.isfinite(x).all():
        raise DataError(f"X must hold N ≥ 1 finite rows, got shape {tuple(x.shape)}")
    chain = trace_chain(net_module, x)
    first = chain.layers[0].linear
    if not chain.prefix and (x.dim() != 2 or x.shape[1] != first.in_features):
        raise DataError(f"X must have shape (N, {first.in_features}), got {tuple(x.shape)}")
    inputs, outputs = _layer_values(net_module, x, chain)
    modules = pd.DataFrame({
        "layer": np.arange(1, len(chain.layers) + 1),
        "module": [layer.path for layer in chain.layers],
        "fan_in": [layer.linear.in_features for layer in chain.layers],
        "fan_out": [layer.linear.out_features for layer in chain.layers],
        "activation": [layer.activation or "" for layer in chain.layers],
        "negative_slope": [np.nan if layer.negative_slope is None else layer.negative_slope for layer in chain.layers],
    })
    notes = [(path, "", reason) for path, reason in chain.notes]
    if chain.relu:
        seq = [m for layer in chain.layers for m in (layer.linear, nn.ReLU())][:-1]
        net = EnsembleMLP.from_sequential(nn.Sequential(*seq), dtype=MEASURE_DTYPE)
        result = analyze(net, inputs[0], threshold, Y, lam, jac_rtol=jac_rtol, curvature=curvature,
                         mse_reduction=mse_reduction, device=device)
        tables = (result.layers, result.points, result.network)
        timings = result.timings
    else:
        lost = ", ".join(c for cols in HOMOGENEOUS_COLUMNS.values() for c in cols)
        notes += [(layer.path, lost, _homogeneous_note(layer, after))
                  for layer, after in zip(chain.layers, chain.layers[1:]) if layer.activation != "relu"]
        tables = _general_tables(net_module, x, chain, inputs, outputs, threshold, Y, lam, jac_rtol, mse_reduction)
        timings = {}
    unsupported = pd.DataFrame(notes, columns=["module", "quantities", "reason"])
    return ModuleAnalysis(*tables, timings, modules, unsupported)


def _call_hooked(module: nn.Module, x: Tensor, handles: list) -> None:
    """module(x) without gradients, then remove the forward hooks `handles` (also on an error)."""
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()


def _layer_values(module: nn.Module, x: Tensor, chain: Chain) -> tuple[list[Tensor], list[Tensor]]:
    """The input (N, fan_in) and output (N, fan_out) of every chain layer on x."""
    inputs, outputs, handles = {}, {}, []
    for k, layer in enumerate(chain.layers):
        def hook(m, args, out, k=k):
            inputs[k], outputs[k] = args[0].detach(), out.detach()
        handles.append(layer.linear.register_forward_hook(hook))
    _call_hooked(module, x, handles)
    L = len(chain.layers)
    for k in range(L):
        if k not in inputs or inputs[k].dim() != 2:
            shape = None if k not in inputs else tuple(inputs[k].shape)
            raise ModelError(f"{chain.layers[k].path}: expected a (N, features) input on X, got {shape}")
    return [inputs[k] for k in range(L)], [outputs[k] for k in range(L)]


def chain_jacobians(module: nn.Module, x: Tensor, chain: Chain, z: Tensor) -> Tensor:
    """∂(last layer's output)/∂(first layer's input) at every point: (N, fan_out_L, fan_in_1).

    The module runs on each x_i with its first chain layer's input replaced by z_i (a forward
    pre-hook), differentiated with torch.func.jacrev and vectorized over points with vmap."""
    held: dict[str, Tensor] = {}
    first, last = chain.layers[0].linear, chain.layers[-1].linear
    handles = [first.register_forward_pre_hook(lambda m, args: (held["z"],)),
               last.register_forward_hook(lambda m, args, out: held.__setitem__("out", out))]

    def output(xi: Tensor, zi: Tensor) -> Tensor:
        held["z"] = zi.unsqueeze(0)
        module(xi.unsqueeze(0))
        return held["out"].squeeze(0)

    try:
        return torch.func.vmap(torch.func.jacrev(output, argnums=1))(x, z)
    except Exception as err:  # an op of the module that vmap or jacrev cannot transform
        raise ModelError(f"cannot differentiate the chain {chain.layers[0].path} → {chain.layers[-1].path} with torch.func ({type(err).__name__}: {err})") from None
    finally:
        for h in handles:
            h.remove()


def _general_tables(module, x, chain, inputs, outputs, threshold, Y, lam, jac_rtol, mse_reduction):
    """The Analysis tables of one network without the HOMOGENEOUS_COLUMNS (NaN there)."""
    L, N = len(chain.layers), inputs[0].shape[0]
    W = [layer.linear.weight.detach()[None] for layer in chain.layers]
    B = [(layer.linear.bias.detach() if layer.linear.bias is not None else torch.zeros_like(w[0, :, 0]))[None] for layer, w in zip(chain.layers, W)]
    pre = [a[None] for a in outputs]
    post = [z[None] for z in inputs[1:]] + [pre[-1]]
    nan = float("nan")
    with torch.no_grad(), _one_thread():
        wspec = weight_spectra(W)
        aspec, pspec = spectra(post), spectra(pre)
    impact = [torch.linalg.vector_norm(p - a) / torch.linalg.vector_norm(a) if p.shape == a.shape else torch.tensor(nan)
              for p, a in zip(post[:-1], pre[:-1])] + [torch.tensor(nan)]
    jac = chain_jacobians(module, x, chain, inputs[0]).detach()[None]
    with torch.no_grad(), _one_thread():
        jspec = jacobian_spectra(jac)
    d_in, d_out = W[0].shape[2], W[-1].shape[1]
    rtol = default_rtol(d_in, d_out, jspec.dtype) if jac_rtol is None else jac_rtol
    jrank = jacobian_rank(jspec, rtol)
    lpd = log_pdet(jspec, jrank)
    k = jrank.max(1).values
    point = torch.where(jrank == k[:, None], lpd, float("-inf")).max(1).indices
    norm_sq = sum(w.square().sum() for w in W) + sum(b.square().sum() for b in B)
    lams = [0.0] if lam is None else _per_member(lam, 1)
    if Y is not None:
        y = _matrix(Y, "Y", d_out, x.device)
        if y.shape[0] != N:
            raise DataError(f"Y has {y.shape[0]} rows but X has {N}")
        sq_error = (outputs[-1] - y).square().sum(-1)
        mse = float(sq_error.mean()) * mse_scale(mse_reduction or "sum", d_out)
    else:
        sq_error, mse = torch.full((N,), nan), nan
    layers = pd.DataFrame({
        "member": 0, "layer": np.arange(1, L + 1),
        "fan_in": [w.shape[2] for w in W], "fan_out": [w.shape[1] for w in W],
        "frob_sq": [float(w.square().sum()) for w in W], "bias_sq": [float(b.square().sum()) for b in B],
        "singular_values": _arrays(wspec),
        "rank": [int(count_above(s, threshold)[0]) for s in wspec],
        "near_one": [int(count_near_one(s)[0]) for s in wspec],
        "act_singular_values": _arrays(aspec),
        "act_rank": [int(relative_rank(s, threshold)[0]) for s in aspec],
        "preact_rank": [int(relative_rank(s, threshold)[0]) for s in pspec],
        "nonlin_impact": [float(v) for v in impact],
        "balance_error": nan, "budget": nan,
    })
    points = pd.DataFrame({
        "member": 0, "point": np.arange(N),
        "jac_singular_values": list(_np(jspec[0])), "jac_rank": _np(jrank[0]), "log_pdet": _np(lpd[0]),
        "schatten": nan, "ntk_trace": nan, "sq_error": _np(sq_error),
    })
    network = pd.DataFrame({
        "member": [0], "depth": L, "param_norm_sq": float(norm_sq), "jac_rank": _np(k), "budget_point": _np(point),
        "r1_lower_bound": nan, "budget_lhs": nan, "budget_rhs": nan, "schatten_max": nan, "ntk_top": nan,
        "hessian_top": nan, "lam": lams[0], "mse": mse, "objective": mse + lams[0] * float(norm_sq),
    })
    return layers, points, network
