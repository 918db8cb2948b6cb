"""Runs: `train(config)` trains an ensemble and writes a run directory; `load_run` reads it back.

A run directory holds
    config.yaml             the resolved config (every default written out)
    metrics.parquet         one row per (logged step, member): see bnrank.train.METRIC_COLUMNS
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
from safetensors.torch import load_file, save_file

import bnrank
from bnrank.atomic import staged_dir
from bnrank.checkpoint import load_checkpoint, save_checkpoint
from bnrank.config import RunConfig, dump_config, load_run_config, override, per_member, read_yaml, validate
from bnrank.errors import ConfigError, StoreError
from bnrank.measure.certificate import certificate_rows
from bnrank.models import EnsembleMLP
from bnrank.tasks import TaskData, make_task
from bnrank.train import fit
from bnrank.train.objective import mse

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Run:
    """A trained ensemble with its config, task, metrics and summary (`path` None if not saved)."""

    config: RunConfig
    model: EnsembleMLP
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
    return load_run_config(config, overrides)


def train(
    config: RunConfig | dict | str | Path,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    overrides: list[str] = (),
) -> Run:
    """Build the task and ensemble a run config describes, train it, and (if `out`) save it.

    `config` is a RunConfig, a dict or a YAML path; `overrides` are ``key=value`` strings.
    Raises ConfigError / DataError on bad input before any training starts; refuses to replace
    an existing `out` unless `overwrite`.
    """
    cfg = _as_config(config, list(overrides))
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise StoreError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task)
    dims = [task.d_in] + [cfg.model.width] * (cfg.model.depth - 1) + [task.d_out]
    model = EnsembleMLP.init(
        cfg.members, dims, seeds=cfg.member_seeds(), init_scale=per_member(cfg.model.init_scale, cfg.members),
        dtype=dtype, device=device,
    )
    result = fit(model, task.x_train, task.y_train, cfg.train, seed=cfg.seed, progress=progress)
    summary = _summary(cfg, model, task, result, device)
    run = Run(cfg, model, task, result.metrics, summary, None)
    if out is not None:
        save_run(run, out, overwrite=overwrite)
    return run


def _summary(cfg: RunConfig, model: EnsembleMLP, task: TaskData, result, device) -> dict:
    last = result.metrics[result.metrics.step == result.metrics.step.max()].sort_values("member")
    with torch.no_grad():
        dt = model.weights[0].dtype
        test = mse(model(task.x_test.to(device, dt)), task.y_test.to(device, dt), cfg.train.mse_reduction).cpu().tolist() if task.x_test.shape[0] else [float("nan")] * model.members
    lams = per_member(cfg.train.lam, cfg.members)
    scales = per_member(cfg.model.init_scale, cfg.members)
    certs = certificate_rows(model, task.x_train, task.y_train, lams, cfg.train.mse_reduction, cfg.train.certify)
    members = []
    for e, row in enumerate(last.itertuples()):
        members.append({
            "member": e, "seed": cfg.member_seeds()[e], "lam": lams[e], "init_scale": scales[e],
            "objective": row.objective, "mse": row.mse, "test_mse": test[e], "param_norm_sq": row.param_norm_sq,
            "grad_norm": row.grad_norm, "balance_error": row.balance_error,
            "diverged": result.diverged[e], "diverged_step": result.diverged_step[e], "converged": result.converged[e],
            "stopped_step": result.stopped_step[e], **certs[e],
        })
    return {
        "members": members, "steps": result.steps, "stopped_early": result.stopped_early,
        "wall_time_s": result.wall_time, "device": str(device), "dtype": cfg.dtype,
        "threads": torch.get_num_threads(), "task": task.metadata, "versions": versions(),
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
        save_file({k: v.contiguous().cpu() for k, v in data.items()}, str(stage / "data.safetensors"), metadata={"task": json.dumps(run.task.metadata)})
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
