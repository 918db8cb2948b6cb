"""Sweeps: a grid of run configs × seeds, trained as batched ensembles into a resumable store.

>>> result = run_sweep("examples/sweep-tiny.yaml", "sweeps/tiny")     # doctest: +SKIP
>>> result.runs.groupby("model.depth").mid_rank.mean()                 # doctest: +SKIP

`run_sweep` expands the spec into cells (one network each, bnrank.sweep.spec), skips the cells
the directory already has, groups the others by network shape into ensembles of at most
`max_members` (bnrank.sweep.grouping), trains each group (bnrank.sweep.work.run_group) with
an executor (bnrank.sweep.executors), writes every finished group as an atomic part and
consolidates the tables (bnrank.sweep.store). Rerunning the same call resumes.

Tables (pandas DataFrames; each has ``cell_id``, ``group_id`` and ``member``, the cell's index in
its group's ensemble):

runs      one row per network: every grid key (dotted column names), seed, depth, width, lam,
          init_scale, lr (phase 0), task, task_seed, n_train, d_in, d_out, true_rank; the final
          objective, mse, test_mse (nan without a test set), param_norm_sq (‖θ‖²), grad_norm,
          balance_error; diverged, diverged_step, converged, stopped_step; mid_rank (# singular
          values of the family's middle operator, W_{⌈L/2⌉} of an MLP, above 0.1); steps; train_time_s (the group's `fit`), wall_time_s (the group's
          task building, training and analysis) and threads: the times are the group's, shared
          by all its members.
metrics   one row per logged step and network (bnrank.training.METRIC_COLUMNS).
layers, points, network
          bnrank.analyze (bnrank.measure.analyze documents the columns) on the first
          `analyze_points` training inputs of the cell's task, with its λ, when the spec's
          `analyze`; ntk_top and hessian_top only with `analyze_curvature`, else NaN.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bnrank.atomic import check_writable
from bnrank.checkpoint import load_checkpoint
from bnrank.config import RunConfig
from bnrank.errors import BnrankError, StoreError, WorkerError
from bnrank.memory import MemoryEstimate, analyze_estimate, check_memory, layer_dims, train_estimate
from bnrank.models import EnsembleMLP
from bnrank.runs import DTYPES, resolve_device, versions
from bnrank.sweep.executors import LocalExecutor
from bnrank.sweep.grouping import Group, group_cells
from bnrank.sweep.ray_executor import RayExecutor
from bnrank.sweep.spec import Cell, SweepSpec, expand, load_spec
from bnrank.sweep.store import SweepStore
from bnrank.sweep.work import GroupResult, run_group

__all__ = [
    "run_sweep", "load_sweep", "SweepResult", "SweepSpec", "Cell", "Group", "GroupResult",
    "LocalExecutor", "RayExecutor", "expand", "group_cells", "load_spec", "run_group",
]


@dataclass
class SweepResult:
    """A sweep directory's spec, cells and tables (see the module docstring for the columns)."""

    path: Path
    spec: SweepSpec
    cells: list[Cell]
    runs: pd.DataFrame
    metrics: pd.DataFrame
    layers: pd.DataFrame
    points: pd.DataFrame
    network: pd.DataFrame

    @property
    def complete(self) -> bool:
        """Whether every cell of the spec has finished."""
        return len(self.runs) == len(self.cells)

    def config(self, cell_id: str) -> RunConfig:
        """The resolved single-member run config of a cell."""
        for cell in self.cells:
            if cell.cell_id == cell_id:
                return cell.config
        raise StoreError(f"no cell {cell_id!r} in sweep {self.path}")

    def model(self, cell_id: str) -> EnsembleMLP:
        """The trained network of a finished cell, as a one-member ensemble."""
        row = self.runs.loc[self.runs.cell_id == cell_id] if not self.runs.empty else self.runs
        if row.empty:
            raise StoreError(f"cell {cell_id!r} has not finished in sweep {self.path}")
        store = SweepStore(self.path)
        dtype = DTYPES[self.config(cell_id).dtype]
        return load_checkpoint(store.checkpoint(row.group_id.iloc[0]), dtype=dtype).select([int(row.member.iloc[0])])


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("cells, {task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
    )


def run_sweep(
    spec: SweepSpec | dict | str | Path,
    out: str | Path,
    workers: int = 1,
    threads: int | None = None,
    resume: bool = True,
    progress: bool | None = None,
    overrides: list[str] = (),
    executor=None,
    extend: bool = False,
    max_memory: int | None = None,
) -> SweepResult:
    """Run (or resume) the sweep `spec` (a SweepSpec, dict or YAML path) into directory `out`.

    Cells `out` already holds are skipped; the rest are grouped, trained with `executor`
    (default ``LocalExecutor(workers, threads)``: `workers` local processes with `threads` torch
    threads each, by default all cores split between the workers, or torch's current setting
    in-process; ``RayExecutor(...)`` runs them on a Ray cluster; any object with
    ``map(groups) -> Iterator[GroupResult]`` will do, see bnrank.sweep.executors) and each
    finished group is written at once. The executor's ``check(cells)``, where it has one, runs
    before anything is written (``device: cuda`` without a GPU fails there, with ConfigError).
    On an error or Ctrl-C the finished groups are kept and consolidated, then the exception
    propagates; rerunning resumes (with this executor or another). `overrides` are
    ``key=value`` strings (see `load_spec`). `progress=None` shows a bar when stderr is a
    terminal. Raises ConfigError for a bad spec, or when with a LocalExecutor the estimated
    memory of the largest groups running at once (bnrank.memory) exceeds `max_memory` bytes or,
    without it, what the machine has available; StoreError when `out` cannot be written, holds
    another sweep (unless `extend` and its finished cells are all cells of `spec`, which then
    replaces the stored spec), is being written by another driver, or (with ``resume=False``)
    already has results; WorkerError when a worker failed for good (a Ray task beyond its
    retries, a pool process that died).
    """
    spec = load_spec(spec, list(overrides))
    cells = expand(spec)
    order = {c.cell_id: c.index for c in cells}
    executor = executor or LocalExecutor(workers, threads)
    if hasattr(executor, "check"):
        executor.check(cells)
    analyze_points = spec.analyze_points if spec.analyze else 0
    if isinstance(executor, LocalExecutor):
        groups = group_cells(cells, spec.max_members, analyze_points, spec.analyze_curvature, spec.batch_coupled)
        on = "cuda" if any(resolve_device(c.config.device).type == "cuda" for c in cells) else "cpu"
        check_memory(sweep_estimate(groups, executor.workers), f"sweep {spec.name}", max_memory, on)
    check_writable(out)
    store = SweepStore(out)
    show = sys.stderr.isatty() if progress is None else progress
    with store.writing(spec, resume=resume, extend=extend, cell_ids=set(order)):
        done = store.done_cells()
        todo = [c for c in cells if c.cell_id not in done]
        groups = group_cells(todo, spec.max_members, analyze_points, spec.analyze_curvature, spec.batch_coupled)
        try:
            with _progress(show) as bar, contextlib.closing(executor.map(groups)) as results:
                task = bar.add_task(f"sweep {spec.name}", total=len(cells), completed=len(cells) - len(todo), info=f"0/{len(groups)} groups")
                for k, result in enumerate(results, start=1):
                    store.write_part(result)
                    bar.update(task, advance=len(result.tables["runs"]), info=f"{k}/{len(groups)} groups")
        except WorkerError as err:
            _consolidate_quietly(store, spec, order)
            raise WorkerError(f"{err}; the finished groups are kept in {out}: rerun to resume") from err
        except BaseException:
            _consolidate_quietly(store, spec, order)
            raise
        tables = store.consolidate(spec, order, versions())
    return SweepResult(Path(out), spec, cells, **tables)


def _consolidate_quietly(store: SweepStore, spec: SweepSpec, order: dict[str, int]) -> None:
    """Consolidate what finished on the way out of a failed sweep; a failure here (the disk that
    is full) gives way to the error already raised."""
    with contextlib.suppress(BnrankError):
        store.consolidate(spec, order, versions())


def sweep_estimate(groups: list[Group], workers: int) -> MemoryEstimate | None:
    """Memory of the largest group (training, or its analysis if larger) times the groups that run at once."""
    estimates = []
    for group in groups:
        cfg = group.cells[0].config
        train = train_estimate(cfg, members=group.members)
        if train is None:
            return None
        if group.analyze_points:
            points = min(group.analyze_points, cfg.task.n_train)
            measure = analyze_estimate(group.members, layer_dims(cfg), points, group.analyze_curvature)
            train = max(train, measure, key=lambda e: e.total)
        estimates.append(train)
    if not estimates:
        return None
    return max(estimates, key=lambda e: e.total).times(min(workers, len(groups)))


def load_sweep(path: str | Path) -> SweepResult:
    """Read a sweep directory (finished or not) without writing to it."""
    store = SweepStore(path)
    if store.stored_spec() is None:
        raise StoreError(f"not a sweep directory (no spec.yaml): {path}")
    spec = load_spec(store.spec_path)
    cells = expand(spec)
    tables = store.read_tables({c.cell_id: c.index for c in cells})
    return SweepResult(Path(path), spec, cells, **tables)
