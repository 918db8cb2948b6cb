"""Minima per rank class: the best regularized minimum found in each rank class at each depth.

Which rank a trained network ends in depends on the basin its seed fell into. To compare rank
classes at a depth L rather than basins, every rank class k gets start points built from the
trained ReLU MLPs, and each start is finished by the descent phases of the depth's recipe:

- ``trained``: a network of depth L whose middle weight W_{⌈L/2⌉} has rank k, as trained;
- ``truncated``: a network of depth L whose middle weight has rank > k, with W_{⌈L/2⌉} replaced
  by its best rank-k approximation (SVD in float64, `truncate_middle`), then re-balanced;
- ``extended``: for a rank class no network of depth L reaches (all have rank < k), a network of
  the deepest shallower depth L' that has rank ≥ k, with L − L' identity layers inserted after
  its middle hidden layer (`extend_depth`; exact for ReLU since post-activations are ≥ 0),
  re-balanced, then truncated to rank k as above.

Rank = # singular values of W_{⌈L/2⌉} above RANK_THRESHOLD (0.1). All starts of one depth are
finished as one ensemble (`finish_starts`, `descent_config`): the truncated and extended starts
first run Adam with W_{⌈L/2⌉} capped at rank k (projected steps, Phase.middle_rank), so the
other layers drop what the truncation cut off, and a start's second direction does not simply
regrow through layers that still carry it; then all run settling phases of heavy-ball GD at a
lower momentum and the train config's phases after the first (no Adam phase, no cap); a member
whose finish ends above its start's objective (heavy-ball GD kicked off a minimum it could not
settle back into within its steps) keeps its start (``kept_start``). Then each is certified
(`bnrank.measure.certificate.certificate_rows`). A finished start may
leave its class (its final rank differs from k): its row is kept and flagged ``left_class``.
`best_minima` picks, per depth and rank class, the lowest-objective row that stayed in its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from bnrank.config import Phase, TrainConfig
from bnrank.errors import ConfigError, DataError, ModelError
from bnrank.measure.certificate import certificate_rows
from bnrank.models import HOMOGENEOUS, EnsembleMLP
from bnrank.pipeline import RANK_THRESHOLD, middle_rank
from bnrank.training import fit
from bnrank.training.objective import objective
from bnrank.training.recipe import middle_layer

STARTS = ("trained", "truncated", "extended")
REBALANCE_SWEEPS = 200
"""Sweeps of `rebalance_` on a start (coordinate descent; a few leave ~1 % imbalance)."""
SETTLE_PHASES = 4
SETTLE_FRACTION = 0.5
"""A finish starts with SETTLE_PHASES settling phases of SETTLE_FRACTION of its first descent
phase's steps in all (`descent_config`)."""
CAPPED_FRACTION = 0.5
"""A capped finish (truncated and extended starts) runs CAPPED_FRACTION of its first descent
phase's steps of Adam with W_{⌈L/2⌉} capped at the start's rank class before settling."""
COLUMNS = ["depth", "rank_class", "start", "source", "source_depth", "source_rank", "mid_rank", "left_class",
           "objective", "param_norm_sq", "mse", "steps", "diverged", "converged", "kept_start"]


@dataclass
class Network:
    """A trained network offered as a source of starts: `model` a one-member EnsembleMLP of
    `depth` layers, `rank` the rank of its W_{⌈L/2⌉}, `objective` its final objective, `source`
    a name for it (a sweep's cell id, a run's member)."""

    source: str
    depth: int
    rank: int
    objective: float
    model: EnsembleMLP


@dataclass
class Start:
    """One start point: a one-member `model` for `rank_class` at `depth`, of kind `start` (STARTS),
    built from the network `source` (of `source_depth`, rank `source_rank`)."""

    depth: int
    rank_class: int
    start: str
    source: str
    source_depth: int
    source_rank: int
    model: EnsembleMLP


def _require_mlp(model) -> None:
    if not isinstance(model, EnsembleMLP):
        raise ModelError(f"rank minima need an MLP, not {model.describe()} (model.kind {model.kind!r})")
    model.require(HOMOGENEOUS, "re-balancing a start point")


def truncate_middle(model: EnsembleMLP, k: int) -> EnsembleMLP:
    """A copy of `model` whose middle weight W_{⌈L/2⌉} of every member is its best rank-k
    approximation (SVD in float64, the top k singular triples kept), then re-balanced."""
    _require_mlp(model)
    if k < 0:
        raise ModelError(f"rank class must be >= 0, got {k}")
    out = model.select(list(range(model.members)))
    w = out.weights[middle_layer(out.depth) - 1]
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
        s[:, k:] = 0
        w.copy_((u * s[:, None, :]) @ vh)
    out.rebalance_(REBALANCE_SWEEPS)
    return out


def extend_depth(model: EnsembleMLP, extra: int) -> EnsembleMLP:
    """A copy of `model` with `extra` identity layers (W = I, b = 0) inserted after its middle
    hidden layer (the output of W_{⌈L/2⌉}), re-balanced; the function is unchanged (the hidden
    post-activations are ≥ 0 for ReLU, and any for a linear net). Needs equal hidden widths."""
    _require_mlp(model)
    if extra < 0:
        raise ModelError(f"cannot extend by {extra} layers")
    hidden = model.dims[1:-1]
    if len(set(hidden)) != 1:
        raise ModelError(f"depth extension needs equal hidden widths, got {hidden}")
    tensors = {k: v.detach().clone() for k, v in model.select(list(range(model.members))).tensors().items()}
    m, depth, e, width = middle_layer(model.depth), model.depth, model.members, hidden[0]
    ref = model.reference
    eye = torch.eye(width, dtype=ref.dtype, device=ref.device).expand(e, width, width)
    new = {}
    for name in ("weight", "bias"):
        if f"{name}.1" not in tensors:
            continue
        old = [tensors[f"{name}.{i}"] for i in range(1, depth + 1)]
        fill = eye.clone() if name == "weight" else torch.zeros(e, width, dtype=ref.dtype, device=ref.device)
        layers = old[:m] + [fill.clone() for _ in range(extra)] + old[m:]
        new |= {f"{name}.{i}": t for i, t in enumerate(layers, start=1)}
    out = EnsembleMLP.from_tensors(new, model.metadata())
    out.rebalance_(REBALANCE_SWEEPS)
    return out


def depth_starts(depth: int, ranks: Sequence[int], networks: Sequence[Network]) -> list[Start]:
    """The starts of every rank class in `ranks` at `depth` from the trained `networks` (all
    depths; see the module docstring). A class with no network of rank ≥ k at depth L or any
    shallower depth gets no start."""
    here = [n for n in networks if n.depth == depth]
    starts = []
    for k in sorted(set(int(r) for r in ranks)):
        for n in here:
            if n.rank == k:
                starts.append(Start(depth, k, "trained", n.source, n.depth, n.rank, n.model))
            elif n.rank > k:
                starts.append(Start(depth, k, "truncated", n.source, n.depth, n.rank, truncate_middle(n.model, k)))
        if any(n.rank >= k for n in here):
            continue
        shallower = [n for n in networks if n.depth < depth and n.rank >= k]
        if not shallower:
            continue
        deepest = max(n.depth for n in shallower)
        source = min((n for n in shallower if n.depth == deepest), key=lambda n: (n.rank != k, n.objective))
        model = truncate_middle(extend_depth(source.model, depth - source.depth), k)
        starts.append(Start(depth, k, "extended", source.source, source.depth, source.rank, model))
    return starts


def descent_config(config: TrainConfig, steps_factor: float = 1.0, caps: Sequence[int | None] | None = None) -> TrainConfig:
    """`config` without its first (Adam) phase, its other phases' steps times `steps_factor`,
    preceded by SETTLE_PHASES settling phases (heavy-ball GD at lr = 1/h_max, momentum 0.9, h_max
    re-measured at each) of SETTLE_FRACTION of the first remaining phase's steps in all; the stop
    rule's `min_steps` shifted to the settling and first descent phase plus one window. With
    `caps` (one per member, None for no cap) and any cap set, a capped phase comes first: the
    config's Adam phase (its lr, the smallest of a per-member lr, and schedule, constant λ) for
    CAPPED_FRACTION of the first remaining phase's steps with `middle_rank` = caps.

    A truncated or extended start is far from a minimum (a depth-16 rank-1 truncation: mse 0.40
    against 0.0024 trained); the recipe's momentum 0.9995 from there blew ‖θ‖² from 55 to 10⁵ and
    diverged, where the settling phases first bring it to 0.065 within 400 steps."""
    if len(config.phases) < 2:
        raise ConfigError("finishing a start needs a train config with phases after the first")
    phases = [p.model_copy(update={"steps": max(1, round(p.steps * steps_factor))}) for p in config.phases[1:]]
    settle = max(SETTLE_PHASES, round(phases[0].steps * SETTLE_FRACTION)) // SETTLE_PHASES
    descent = phases[0].steps
    phases = [Phase(optimizer="gd", steps=settle, lr_sharpness=1.0, momentum=0.9)] * SETTLE_PHASES + phases
    first = SETTLE_PHASES * settle + (phases[SETTLE_PHASES].steps if len(phases) > SETTLE_PHASES + 1 else 0)
    if caps is not None and any(c is not None for c in caps):
        adam = config.phases[0]
        if adam.optimizer != "adam":
            raise ConfigError(f"a capped finish runs the train config's Adam phase, not {adam.optimizer!r}")
        lr = min(adam.lr) if isinstance(adam.lr, list) else adam.lr
        capped = adam.model_copy(update={"steps": max(1, round(descent * CAPPED_FRACTION)), "lr": lr,
                                         "lam_factor_start": 1.0, "warmup_steps": 0, "middle_rank": list(caps)})
        phases = [capped] + phases
        first += capped.steps
    stop = config.stop
    if stop is not None:
        stop = stop.model_copy(update={"min_steps": min(stop.min_steps, first + stop.window)})
    return config.model_copy(update={"phases": phases, "stop": stop})


def stack(models: Sequence[EnsembleMLP]) -> EnsembleMLP:
    """One ensemble whose members are the members of `models` in order (one shape, one dtype)."""
    shapes = {tuple(m.dims) for m in models}
    if len(shapes) != 1:
        raise ModelError(f"starts of one depth must have one shape, got {sorted(shapes)}")
    tensors = [m.tensors() for m in models]
    return EnsembleMLP.from_tensors({k: torch.cat([t[k].detach() for t in tensors]) for k in tensors[0]},
                                    models[0].metadata())


def finish_starts(starts: Sequence[Start], x: Tensor, y: Tensor, config: TrainConfig, lam: float,
                  steps_factor: float = 1.0, certify: bool = True) -> pd.DataFrame:
    """Finish the starts of one depth as one ensemble with `descent_config(config, steps_factor)`
    on (x (N, d_in), y (N, d_out)) at λ = `lam`, then certify them. One row per start: COLUMNS
    plus the ``cert_*`` columns (`certify`)."""
    if not starts:
        return pd.DataFrame(columns=COLUMNS)
    model = stack([s.model for s in starts])
    train = descent_config(config, steps_factor, [None if s.start == "trained" else s.rank_class for s in starts])
    lams = [float(lam)] * model.members
    lam_t = torch.tensor(lams, dtype=model.reference.dtype, device=model.reference.device)
    xm, ym = x.to(model.reference), y.to(model.reference)
    start_tensors = {k: v.detach().clone() for k, v in model.tensors().items()}
    with torch.no_grad():
        start_values = objective(model, xm, ym, lam_t, train.mse_reduction)
    result = fit(model, x, y, train, lam=lams, progress=False)
    with torch.no_grad():
        end_values = objective(model, xm, ym, lam_t, train.mse_reduction)
        keep = torch.isfinite(start_values[0]) & ~(end_values[0] <= start_values[0])  # a NaN end keeps the start too
        for name, t in model.tensors().items():
            t[keep] = start_tensors[name][keep]
    obj, err, norm_sq = (torch.where(keep, a, b).tolist() for a, b in zip(start_values, end_values))
    kept = keep.tolist()
    ranks = middle_rank(model, RANK_THRESHOLD)
    certs = certificate_rows(model, x, y, lams, train, certify)
    rows = []
    for e, s in enumerate(starts):
        rows.append({
            "depth": s.depth, "rank_class": s.rank_class, "start": s.start, "source": s.source,
            "source_depth": s.source_depth, "source_rank": s.source_rank, "mid_rank": int(ranks[e]),
            "left_class": int(ranks[e]) != s.rank_class, "objective": obj[e], "param_norm_sq": norm_sq[e],
            "mse": err[e], "steps": int(result.stopped_step[e]), "diverged": bool(result.diverged[e]) and not kept[e],
            "converged": bool(result.converged[e]) and not kept[e], "kept_start": kept[e], **certs[e],
        })
    return pd.DataFrame(rows)


def mark_best(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with a column ``best``: whether the row is its (depth, rank_class)'s `best_minima` row."""
    kept = rows[~rows["left_class"].astype(bool) & ~rows["diverged"].astype(bool)] if len(rows) else rows
    best = set(kept.groupby(["depth", "rank_class"])["objective"].idxmin()) if len(kept) else set()
    return rows.assign(best=[i in best for i in rows.index])


def best_minima(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (depth, rank_class): the lowest-objective row that stayed in its class and did not
    diverge, sorted by depth then rank class (a class whose every start left it has no row)."""
    kept = rows[~rows["left_class"].astype(bool) & ~rows["diverged"].astype(bool)]
    if kept.empty:
        return kept.reset_index(drop=True)
    best = kept.loc[kept.groupby(["depth", "rank_class"])["objective"].idxmin()]
    return best.sort_values(["depth", "rank_class"]).reset_index(drop=True)


@dataclass
class Problem:
    """What the starts of each depth are finished on: the trained `networks` (all depths) and,
    per depth, its training inputs `x` (N, d_in), targets `y` (N, d_out), train config and λ."""

    networks: list[Network]
    x: dict[int, Tensor]
    y: dict[int, Tensor]
    train: dict[int, TrainConfig]
    lam: dict[int, float]


def problem_from_sweep(result) -> Problem:
    """The finished, non-diverged networks of a sweep (`bnrank.load_sweep`) and each depth's data,
    train config and λ. Every cell must share one task and one λ (ConfigError otherwise)."""
    from bnrank.tasks import make_task

    runs = result.runs
    if runs.empty:
        raise DataError(f"sweep {result.path} has no finished cells")
    runs = runs[~runs["diverged"].astype(bool)]
    configs = {cid: result.config(cid) for cid in runs["cell_id"]}
    tasks = {c.task.model_dump_json() for c in configs.values()}
    if len(tasks) != 1 or runs["lam"].nunique() != 1:
        raise ConfigError(f"rank minima compare depths on one task and one λ; sweep {result.path} has "
                          f"{len(tasks)} tasks and {runs['lam'].nunique()} values of λ")
    first = next(iter(configs.values()))
    if first.model.kind != "mlp":
        raise ModelError(f"rank minima need an MLP, not model.kind {first.model.kind!r}")
    task = make_task(first.task)
    networks, x, y, train, lam = [], {}, {}, {}, {}
    for row in runs.itertuples():
        cfg = configs[row.cell_id]
        depth = int(row.depth)
        networks.append(Network(row.cell_id, depth, int(row.mid_rank), float(row.objective), result.model(row.cell_id)))
        x[depth], y[depth], train[depth], lam[depth] = task.x_train, task.y_train, cfg.train, float(row.lam)
    return Problem(networks, x, y, train, lam)


def problem_from_run(run) -> Problem:
    """The non-diverged members of a run (`bnrank.load_run`), one depth, each its own source
    ("member e"). Every member must share one λ (ConfigError otherwise)."""
    members = run.members[~run.members["diverged"].astype(bool)]
    if members.empty:
        raise DataError(f"run {run.path} has no member that did not diverge")
    if members["lam"].nunique() != 1:
        raise ConfigError(f"rank minima compare members at one λ; run {run.path} has {members['lam'].nunique()}")
    if not isinstance(run.model, EnsembleMLP):
        raise ModelError(f"rank minima need an MLP, not {run.model.describe()} (model.kind {run.model.kind!r})")
    depth = run.model.depth
    networks = [Network(f"member {int(m.member)}", depth, int(m.mid_rank), float(m.objective),
                        run.model.select([int(m.member)])) for m in members.itertuples()]
    lam = float(members["lam"].iloc[0])
    return Problem(networks, {depth: run.task.x_train}, {depth: run.task.y_train}, {depth: run.config.train}, {depth: lam})


def load_problem(path) -> Problem:
    """`problem_from_sweep` of a sweep directory or `problem_from_run` of a run directory."""
    from pathlib import Path

    from bnrank.errors import StoreError
    from bnrank.runs import load_run
    from bnrank.sweep import load_sweep

    path = Path(path)
    if (path / "spec.yaml").is_file():
        return problem_from_sweep(load_sweep(path))
    if (path / "config.yaml").is_file():
        return problem_from_run(load_run(path))
    raise StoreError(f"{path} is neither a run directory nor a sweep directory")


def depth_minima(problem: Problem, depth: int, ranks: Sequence[int], steps_factor: float = 1.0,
                 certify: bool = True) -> pd.DataFrame:
    """The finished starts (`finish_starts` rows) of every rank class in `ranks` at `depth`."""
    starts = depth_starts(depth, ranks, problem.networks)
    return finish_starts(starts, problem.x[depth], problem.y[depth], problem.train[depth], problem.lam[depth],
                         steps_factor, certify)


def rank_minima(problem: Problem, ranks: Sequence[int], steps_factor: float = 1.0,
                certify: bool = True) -> pd.DataFrame:
    """`depth_minima` of every depth of `problem`, ascending, concatenated (one row per start)."""
    if not ranks or min(ranks) < 0:
        raise ConfigError(f"rank classes must be a non-empty list of ranks >= 0, got {list(ranks)}")
    frames = [depth_minima(problem, d, ranks, steps_factor, certify) for d in sorted(problem.x)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
