"""The unit of work of a sweep: `run_group(group) -> GroupResult`, a pure function.

It builds each member's task, trains the group as one ensemble with `fit`, and returns the
group's tables and trained parameters; it writes nothing, so any executor (in-process, a local
process pool, a cluster) can run it and hand the result to the one place that writes the store.

Member e of the group is initialised exactly as its cell would be by ``bnrank.train(cell.config)``
(EnsembleMLP.init with the cell's seed and init scale) and is trained on its own task's data
(shared inputs (N, d) when every member has the same task, else stacked (E, N, d)).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch

from bnrank.config import per_member
from bnrank.measure import analyze
from bnrank.measure.certificate import certificate_rows
from bnrank.models import EnsembleMLP
from bnrank.runs import DTYPES, resolve_device
from bnrank.sweep.grouping import Group
from bnrank.tasks import TaskData, make_task
from bnrank.train import fit
from bnrank.train.objective import mse

#: Singular values of the middle weight matrix above this count towards `mid_rank` (the paper's 0.1).
RANK_THRESHOLD = 0.1

#: Tables every GroupResult carries; ANALYZE_TABLES are added when the group is analyzed.
BASE_TABLES = ("runs", "metrics")
ANALYZE_TABLES = ("layers", "points", "network")


@dataclass
class GroupResult:
    """What one group produced. Each table has ``cell_id``, ``group_id`` and ``member`` columns:
    `runs` (one row per member; with train.certify its certificate's ``cert_*`` columns), `metrics` (one row per logged step and member, the trainer's
    METRIC_COLUMNS) and, when analyzed, `layers`, `points`, `network` from bnrank.analyze.
    `model` holds the trained parameters on the CPU."""

    group_id: str
    tables: dict[str, pd.DataFrame]
    model: EnsembleMLP


def middle_rank(model: EnsembleMLP, threshold: float = RANK_THRESHOLD) -> list[int]:
    """# singular values of W_{⌈L/2⌉} (1-based layer index) above `threshold`, per member, in float64."""
    w = model.weights[math.ceil(model.depth / 2) - 1].detach().double()
    return (torch.linalg.svdvals(w) > threshold).sum(-1).tolist()


def _cell_tasks(group: Group) -> tuple[list[TaskData], dict[str, list[int]]]:
    """Each member's task (built once per distinct task config) and the members of each task."""
    keys = [json.dumps(c.config.task.model_dump(mode="json"), sort_keys=True) for c in group.cells]
    built: dict[str, TaskData] = {}
    members: dict[str, list[int]] = {}
    for e, (cell, key) in enumerate(zip(group.cells, keys)):
        if key not in built:
            built[key] = make_task(cell.config.task)
        members.setdefault(key, []).append(e)
    return [built[key] for key in keys], members


def _stack(tensors: list[torch.Tensor], shared: bool) -> torch.Tensor:
    return tensors[0] if shared else torch.stack(tensors)


def run_group(group: Group) -> GroupResult:
    """Train `group` as one ensemble (and analyze it if asked); see the module docstring."""
    start = time.perf_counter()
    first = group.cells[0].config
    device, dtype = resolve_device(first.device), DTYPES[first.dtype]
    tasks, by_task = _cell_tasks(group)
    shared = len(by_task) == 1
    dims = [tasks[0].d_in] + [first.model.width] * (first.model.depth - 1) + [tasks[0].d_out]
    model = EnsembleMLP.init(
        group.members, dims, seeds=[c.config.seed for c in group.cells],
        init_scale=[per_member(c.config.model.init_scale, 1)[0] for c in group.cells], dtype=dtype, device=device,
    )
    x = _stack([t.x_train for t in tasks], shared)
    y = _stack([t.y_train for t in tasks], shared)
    result = fit(model, x, y, group.train_config(), seed=first.seed, progress=False)
    with torch.no_grad():
        if tasks[0].x_test.shape[0]:
            x_test = _stack([t.x_test for t in tasks], shared).to(device, dtype)
            y_test = _stack([t.y_test for t in tasks], shared).to(device, dtype)
            test_mse = mse(model(x_test), y_test, first.train.mse_reduction).cpu().tolist()
        else:
            test_mse = [float("nan")] * group.members
    model = model.cpu()
    train = group.train_config()
    certs = certificate_rows(model, x, y, train.lam, train.mse_reduction, train.certify)
    tables = {"runs": _runs_rows(group, tasks, result, test_mse, middle_rank(model), certs), "metrics": result.metrics}
    if group.analyze_points:
        tables |= analyze_group(model, tasks, by_task, group)
    tables["runs"]["wall_time_s"] = time.perf_counter() - start
    for df in tables.values():
        _label(df, group)
    return GroupResult(group.group_id, tables, model)


def _runs_rows(group: Group, tasks: list[TaskData], result, test_mse: list[float], ranks: list[int],
               certs: list[dict]) -> pd.DataFrame:
    """One row per member: grid values, key config values, final diagnostics, flags."""
    last = result.metrics[result.metrics.step == result.metrics.step.max()].set_index("member")
    rows = []
    for e, (cell, task) in enumerate(zip(group.cells, tasks)):
        cfg, final = cell.config, last.loc[e]
        rows.append({
            "member": e, **{k: _scalar(v) for k, v in cell.values.items()},
            "seed": cfg.seed, "depth": cfg.model.depth, "width": cfg.model.width, "lam": per_member(cfg.train.lam, 1)[0],
            "init_scale": per_member(cfg.model.init_scale, 1)[0], "lr": per_member(cfg.train.phases[0].lr, 1)[0], "task": cfg.task.kind,
            "task_seed": cfg.task.seed, "n_train": cfg.task.n_train, "d_in": task.d_in, "d_out": task.d_out,
            "true_rank": task.metadata.get("true_rank"),
            "objective": final.objective, "mse": final.mse, "test_mse": test_mse[e],
            "param_norm_sq": final.param_norm_sq, "grad_norm": final.grad_norm, "balance_error": final.balance_error,
            "diverged": result.diverged[e], "diverged_step": result.diverged_step[e], "converged": result.converged[e],
            "mid_rank": ranks[e], "steps": result.steps, "train_time_s": result.wall_time,
            "threads": torch.get_num_threads(), **certs[e],
        })
    return pd.DataFrame(rows).astype({"diverged_step": "Int64", "true_rank": "Int64"})


def _scalar(value):
    """Grid values that are lists or mappings (e.g. a whole phase list) become JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _label(df: pd.DataFrame, group: Group) -> None:
    """Make ``cell_id``, ``group_id``, ``member`` the first columns, in place."""
    ids = [c.cell_id for c in group.cells]
    member = df.pop("member")
    df.insert(0, "member", member)
    df.insert(0, "group_id", group.group_id)
    df.insert(0, "cell_id", [ids[m] for m in member])


def analyze_group(model: EnsembleMLP, tasks: list[TaskData], by_task: dict[str, list[int]], group: Group) -> dict[str, pd.DataFrame]:
    """bnrank.analyze on at most `group.analyze_points` training inputs (with λ, so the objective
    and its Hessian are the trained ones), once per distinct task and the members sharing it;
    `member` is mapped back to the group's member index."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in ANALYZE_TABLES}
    n = group.analyze_points
    for members in by_task.values():
        task = tasks[members[0]]
        lam = [per_member(group.cells[e].config.train.lam, 1)[0] for e in members]
        result = analyze(
            model.select(members), task.x_train[:n], threshold=RANK_THRESHOLD, Y=task.y_train[:n], lam=lam,
            mse_reduction=group.cells[0].config.train.mse_reduction,
            curvature=group.analyze_curvature,
        )
        for name in ANALYZE_TABLES:
            df = getattr(result, name).copy()
            df["member"] = [members[m] for m in df["member"]]
            parts[name].append(df)
    return {name: pd.concat(dfs, ignore_index=True).sort_values("member", kind="stable", ignore_index=True) for name, dfs in parts.items()}
