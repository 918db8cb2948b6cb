"""The unit of work of a sweep: `run_group(group) -> GroupResult`, a pure function.

It trains the group as one ensemble through `bnrank.pipeline.train_ensemble` (the path
`bnrank.train` takes too: member e is initialised exactly as its cell would be by
``bnrank.train(cell.config)`` and trained on its own task's data) and returns the group's
tables and trained parameters; it writes nothing, so any executor (in-process, a local process
pool, a cluster) can run it and hand the result to the one place that writes the store.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pandas as pd
import torch

from bnrank.config import per_member
from bnrank.measure import analyze
from bnrank.models import EnsembleModel
from bnrank.pipeline import DTYPES, RANK_THRESHOLD, TrainedEnsemble, train_ensemble
from bnrank.runs import resolve_device
from bnrank.sweep.grouping import Group

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
    model: EnsembleModel


def run_group(group: Group) -> GroupResult:
    """Train `group` as one ensemble (and analyze it if asked); see the module docstring."""
    start = time.perf_counter()
    first = group.cells[0].config
    configs = [c.config for c in group.cells]
    train_config = group.train_config()
    trained = train_ensemble(
        first.model, train_config, [c.task for c in configs], [c.seed for c in configs],
        [per_member(c.model.init_scale, 1)[0] for c in configs], train_config.lam,
        resolve_device(first.device), DTYPES[first.dtype], seed=first.seed,
    )
    trained.model = trained.model.cpu()
    tables = {"runs": _runs_rows(group, trained), "metrics": trained.result.metrics}
    if group.analyze_points:
        tables |= analyze_group(trained, group)
    tables["runs"]["wall_time_s"] = time.perf_counter() - start
    for df in tables.values():
        _label(df, group)
    return GroupResult(group.group_id, tables, trained.model)


def _runs_rows(group: Group, trained: TrainedEnsemble) -> pd.DataFrame:
    """One row per member: grid values, key config values, the pipeline's final diagnostics."""
    rows = []
    for e, (cell, task, member) in enumerate(zip(group.cells, trained.tasks, trained.member_rows())):
        cfg = cell.config
        rows.append({
            "member": e, **{k: _scalar(v) for k, v in cell.values.items()},
            "seed": cfg.seed, "depth": cfg.model.depth, "width": cfg.model.width, "lam": member["lam"],
            "init_scale": member["init_scale"], "lr": per_member(cfg.train.phases[0].lr, 1)[0], "task": cfg.task.kind,
            "task_seed": getattr(cfg.task, "seed", None), "n_train": task.x_train.shape[0], "d_in": task.d_in, "d_out": task.d_out,
            "true_rank": task.metadata.get("true_rank"),
            **{k: v for k, v in member.items() if k not in ("member", "seed", "lam", "init_scale")},
            "steps": trained.result.steps, "train_time_s": trained.result.wall_time,
            "threads": torch.get_num_threads(),
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


def analyze_group(trained: TrainedEnsemble, group: Group) -> dict[str, pd.DataFrame]:
    """bnrank.analyze on at most `group.analyze_points` training inputs (with λ, so the objective
    and its Hessian are the trained ones), once per distinct task and the members sharing it;
    `member` is mapped back to the group's member index."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in ANALYZE_TABLES}
    n = group.analyze_points
    for members in trained.by_task.values():
        task = trained.tasks[members[0]]
        result = analyze(
            trained.model.select(members), task.x_train[:n], threshold=RANK_THRESHOLD, Y=task.y_train[:n],
            lam=[trained.lam[e] for e in members], mse_reduction=group.cells[0].config.train.mse_reduction,
            curvature=group.analyze_curvature,
        )
        for name in ANALYZE_TABLES:
            df = getattr(result, name).copy()
            df["member"] = [members[m] for m in df["member"]]
            parts[name].append(df)
    return {name: pd.concat(dfs, ignore_index=True).sort_values("member", kind="stable", ignore_index=True) for name, dfs in parts.items()}
