"""Runs: `train(config)` trains an ensemble and writes a run directory; `load_run` reads it back.

A run directory holds
    config.yaml             the resolved config (every default written out)
    metrics.parquet         one row per (logged step, member): see bnrank.training.METRIC_COLUMNS
    checkpoint.safetensors  final parameters of every member
    data.safetensors        the task's tensors (x_train, y_train, x_test, y_test), float64
    summary.json            per-member final values, flags, wall time, seeds, versions
                            (and the certificate's cert_* values with train.certify)
It is staged in a temporary sibling and renamed into place when complete, so a run directory
is either whole or absent.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

import bnrank
from bnrank.atomic import check_writable, staged_dir
from bnrank.checkpoint import load_checkpoint, save_checkpoint, write_safetensors
from bnrank.config import RunConfig, dump_config, load_run_config, override, per_member, read_yaml, validate
from bnrank.errors import ConfigError, StoreError
from bnrank.memory import check_memory, train_estimate
from bnrank.models import EnsembleModel
from bnrank.pipeline import DTYPES, TrainedEnsemble, train_ensemble
from bnrank.tasks import TaskData, make_task
from bnrank.tasks.file import config_with_arrays


@dataclass
class Run:
    """A trained ensemble with its config, task, metrics and summary (`path` None if not saved)."""

    config: RunConfig
    model: EnsembleModel
    task: TaskData
    metrics: pd.DataFrame
    summary: dict[str, Any]
    path: Path | None = None
    members: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.members = pd.DataFrame(self.summary["members"])


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda when available) → torch.device; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA device (use 'cpu' or 'auto')")
    return torch.device(name)


def versions() -> dict[str, str]:
    return {"bnrank": bnrank.__version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _as_config(config: RunConfig | dict | str | Path, overrides: list[str]) -> RunConfig:
    if isinstance(config, RunConfig):
        if not overrides:
            return config
        config = config.model_dump(mode="json")
    if isinstance(config, dict):
        return validate(RunConfig, override(config, overrides))
    if not isinstance(config, (str, Path)):
        raise ConfigError(f"a run config is a RunConfig, a dict or a YAML path, not a {type(config).__name__}")
    return load_run_config(config, overrides)


def train(
    config: RunConfig | dict | str | Path,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    overrides: list[str] = (),
    max_memory: int | None = None,
    x=None,
    y=None,
    x_test=None,
    y_test=None,
) -> Run:
    """Build the task and ensemble a run config describes, train it, and (if `out`) save it.

    `config` is a RunConfig, a dict or a YAML path; `overrides` are ``key=value`` strings.
    `x` (N, d_in), `y` (N, d_out) and optionally `x_test`, `y_test` (tensors or arrays) train on
    your own data instead of the config's task (bnrank.tasks.file.config_with_arrays: the run's
    config records a `file` task with the arrays' sha256).

    Raises ConfigError / DataError on bad input before any training starts, ConfigError when
    the run's estimated memory (bnrank.memory) exceeds `max_memory` bytes or, without it, what
    the device has available, and StoreError when `out` cannot be written; refuses to replace
    an existing `out` unless `overwrite`.
    """
    cfg = _as_config(config, list(overrides))
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise StoreError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    if out is not None:
        check_writable(out)
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    check_memory(train_estimate(cfg), f"training {out or 'the run'}", max_memory, device)
    torch.manual_seed(cfg.seed)
    if all(a is None for a in (x, y, x_test, y_test)):
        task = make_task(cfg.task)
    else:
        cfg, task = config_with_arrays(cfg, x, y, x_test, y_test)
    tasks = ([task] * cfg.members, {"task": list(range(cfg.members))})
    trained = train_ensemble(
        cfg.model, cfg.train, [cfg.task] * cfg.members, cfg.member_seeds(), per_member(cfg.model.init_scale, cfg.members),
        per_member(cfg.train.lam, cfg.members), device, dtype, seed=cfg.seed, progress=progress, tasks=tasks,
    )
    run = Run(cfg, trained.model, trained.tasks[0], trained.result.metrics, _summary(cfg, trained, device), None)
    if out is not None:
        save_run(run, out, overwrite=overwrite)
    return run


def _summary(cfg: RunConfig, trained: TrainedEnsemble, device) -> dict:
    result = trained.result
    return {
        "members": trained.member_rows(), "steps": result.steps, "stopped_early": result.stopped_early,
        "wall_time_s": result.wall_time, "device": str(device), "dtype": cfg.dtype,
        "threads": torch.get_num_threads(), "task": trained.tasks[0].metadata, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save_run(run: Run, out: str | Path, overwrite: bool = False) -> Path:
    """Write `run` as a run directory (atomically: staged, then renamed)."""
    out = Path(out)
    data = {"x_train": run.task.x_train, "y_train": run.task.y_train, "x_test": run.task.x_test, "y_test": run.task.y_test}
    with staged_dir(out, overwrite=overwrite) as stage:
        (stage / "config.yaml").write_text(dump_config(run.config))
        run.metrics.to_parquet(stage / "metrics.parquet", index=False)
        save_checkpoint(run.model, stage / "checkpoint.safetensors")
        write_safetensors(stage / "data.safetensors", {k: v.contiguous().cpu() for k, v in data.items()}, {"task": json.dumps(run.task.metadata)})
        (stage / "summary.json").write_text(json.dumps(run.summary, indent=2) + "\n")
    run.path = out
    return out


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Read a run directory written by `train`; missing or corrupt parts raise StoreError."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"not a run directory: {path}")
    missing = [f for f in ("config.yaml", "metrics.parquet", "checkpoint.safetensors", "data.safetensors", "summary.json") if not (path / f).is_file()]
    if missing:
        raise StoreError(f"{path} is not a complete run directory (missing {', '.join(missing)})")
    cfg = validate(RunConfig, read_yaml(path / "config.yaml"), source=str(path / "config.yaml"))
    try:
        summary = json.loads((path / "summary.json").read_text())
        metrics = pd.read_parquet(path / "metrics.parquet")
        data = load_file(str(path / "data.safetensors"))
        task = TaskData(data["x_train"], data["y_train"], data["x_test"], data["y_test"], summary.get("task", {}))
    except (OSError, ValueError, KeyError) as err:
        raise StoreError(f"corrupt run directory {path}: {err}") from None
    model = load_checkpoint(path / "checkpoint.safetensors", dtype=DTYPES[cfg.dtype], device=device)
    return Run(cfg, model, task, metrics, summary, path)
