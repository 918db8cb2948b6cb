"""The one path from run configs to a trained ensemble and its per-member rows.

`bnrank.train` (one config, E members sharing its task) and a sweep's groups (one single-member
config per member, maybe each with its own task) both describe an ensemble by its members: the
member's init seed, init scale, λ and task. `train_ensemble` builds each distinct task once,
builds the ensemble of the config's model family (bnrank.models.registry), trains it with
`bnrank.training.fit` (shared inputs (N, d) when every member has the same task, else stacked
(E, N, d)), measures the test error and returns the per-member rows both callers report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bnrank.config import TrainConfig
from bnrank.errors import DataError
from bnrank.measure.certificate import certificate_rows
from bnrank.models import EnsembleModel, build_model
from bnrank.tasks import TaskData, make_task
from bnrank.training import fit
from bnrank.training.objective import mse
from bnrank.training.trainer import TrainResult

DTYPES = {"float32": torch.float32, "float64": torch.float64}

RANK_THRESHOLD = 0.1
"""Singular values of the middle weight operator above this count towards `mid_rank` (the paper's 0.1)."""


@dataclass
class TrainedEnsemble:
    """A trained ensemble (on its training device) with what it was trained on.

    tasks: each member's task; by_task: the members of each distinct task (keys: canonical task
    config JSON); result: what `fit` did; test_mse: per member (NaN without test points);
    certificates: per member, the ``cert_*`` values of bnrank.measure.certificate (empty unless
    the train config's `certify`)."""

    model: EnsembleModel
    tasks: list[TaskData]
    by_task: dict[str, list[int]]
    result: TrainResult
    test_mse: list[float]
    seeds: list[int]
    init_scale: list[float]
    lam: list[float]
    certificates: list[dict]
    wall_time: float

    @property
    def shared(self) -> bool:
        return len(self.by_task) == 1

    def member_rows(self, threshold: float = RANK_THRESHOLD) -> list[dict]:
        """One dict per member: seed, λ, init scale, final objective / mse / test_mse / R(θ) /
        gradient norm / balance error, divergence and stop flags, `mid_rank`, and the
        certificate's ``cert_*`` values when there is one."""
        metrics = self.result.metrics
        last = metrics[metrics.step == metrics.step.max()].set_index("member")
        ranks = middle_rank(self.model, threshold)
        r = self.result
        rows = []
        for e in range(self.model.members):
            final = last.loc[e]
            rows.append({
                "member": e, "seed": self.seeds[e], "lam": self.lam[e], "init_scale": self.init_scale[e],
                "objective": float(final.objective), "mse": float(final.mse), "test_mse": self.test_mse[e],
                "param_norm_sq": float(final.param_norm_sq), "grad_norm": float(final.grad_norm),
                "balance_error": float(final.balance_error),
                "diverged": r.diverged[e], "diverged_step": r.diverged_step[e], "converged": r.converged[e],
                "stopped_step": r.stopped_step[e], "mid_rank": ranks[e], **self.certificates[e],
            })
        return rows


def middle_rank(model: EnsembleModel, threshold: float = RANK_THRESHOLD) -> list[int]:
    """# singular values of the family's middle operator (W_{⌈L/2⌉} for an MLP) above
    `threshold`, per member, in float64."""
    w = model.operators()[model.middle_operator()].detach().double()
    return (torch.linalg.svdvals(w) > threshold).sum(-1).tolist()


def build_tasks(task_configs: Sequence) -> tuple[list[TaskData], dict[str, list[int]]]:
    """Each member's task (built once per distinct task config) and the members of each task."""
    keys = [json.dumps(t.model_dump(mode="json"), sort_keys=True) for t in task_configs]
    built: dict[str, TaskData] = {}
    members: dict[str, list[int]] = {}
    for e, (task, key) in enumerate(zip(task_configs, keys)):
        if key not in built:
            built[key] = make_task(task)
        members.setdefault(key, []).append(e)
    return [built[key] for key in keys], members


def _stack(tensors: list[torch.Tensor], shared: bool) -> torch.Tensor:
    return tensors[0] if shared else torch.stack(tensors)


def train_ensemble(
    model_config,
    train_config: TrainConfig,
    task_configs: Sequence,
    seeds: Sequence[int],
    init_scale: Sequence[float],
    lam: Sequence[float],
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    progress: bool | None = False,
    tasks: tuple[list[TaskData], dict[str, list[int]]] | None = None,
) -> TrainedEnsemble:
    """Train one ensemble member per seed; member e has init scale ``init_scale[e]``, penalty
    ``lam[e]`` and task ``task_configs[e]`` (or the prebuilt `tasks` with their grouping).
    `seed` drives minibatch sampling."""
    start = time.perf_counter()
    member_tasks, by_task = tasks if tasks is not None else build_tasks(task_configs)
    shared = len(by_task) == 1
    masked = [t.metadata.get("kind", "?") for t in member_tasks if t.mask is not None]
    if masked:
        raise DataError(f"task {masked[0]} observes only part of its targets (a mask), and bnrank.train fits every "
                        "target entry: train it with a masked objective (the l2-linear experiment, bnrank.experiments.l2_linear)")
    model = build_model(model_config, member_tasks[0].d_in, member_tasks[0].d_out, seeds, init_scale, dtype, device)
    x = _stack([t.x_train for t in member_tasks], shared)
    y = _stack([t.y_train for t in member_tasks], shared)
    result = fit(model, x, y, train_config, lam=list(lam), seed=seed, progress=progress)
    with torch.no_grad():
        if member_tasks[0].x_test.shape[0]:
            final = model.reference.dtype  # float64 after an lbfgs finish
            x_test = _stack([t.x_test for t in member_tasks], shared).to(device, final)
            y_test = _stack([t.y_test for t in member_tasks], shared).to(device, final)
            test_mse = mse(model(x_test), y_test, train_config.mse_reduction).cpu().tolist()
        else:
            test_mse = [float("nan")] * len(seeds)
    certificates = certificate_rows(model, x, y, list(lam), train_config, train_config.certify)
    return TrainedEnsemble(model, member_tasks, by_task, result, test_mse, list(seeds), [float(s) for s in init_scale],
                           [float(v) for v in lam], certificates, time.perf_counter() - start)
