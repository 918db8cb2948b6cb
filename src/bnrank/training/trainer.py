"""`fit`: train an ensemble on the regularized objective, in phases, with diagnostics.

The hot loop does one batched forward/backward for all members (the family's
`objective_and_grads`: hand-written backprop for the MLP, `bnrank.training.backprop`), on a GPU
replayed as a CUDA graph (`bnrank.training.step`), and never
synchronizes on a member's value: a member whose objective turns non-finite is masked out
on-device (its parameters stay as they were at that step) while the others go on unchanged.
Diagnostics are computed every `log_every` steps at the current parameters on the full training
set; there a member that meets the stop rule is frozen the same way, so every member's result is
what it would be if it were trained alone. Training ends when no member is left to train. In a
phase with `middle_rank` the MLP's W_{⌈L/2⌉} is projected onto its rank cap after every step
(`EnsembleMLP.cap_middle_rank_`, outside the CUDA graph).

A last phase with optimizer "lbfgs" is the float64 second-order finish (`bnrank.training.finish`):
the model's parameters become float64 and stay so; one step is one L-BFGS iteration (its line
search's trials included); a member stops as converged at the phase's gradient tolerance, or is
frozen as failed when its line search finds no decrease (`TrainResult.failed`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from bnrank.config import StopRule, TrainConfig, per_member
from bnrank.errors import ConfigError, DataError
from bnrank.measure.certificate import finish_kink_tol
from bnrank.models import HOMOGENEOUS, LAYER_STEPS, EnsembleMLP, EnsembleModel
from bnrank.training.backprop import Workspace
from bnrank.training.escape import leave_saddles
from bnrank.training.finish import LBFGS, ModelObjective
from bnrank.training.flat import FlatParameters
from bnrank.training.optim import make_optimizer
from bnrank.training.schedules import lam_factor, lr_factor, resolve_phase
from bnrank.training.step import GraphedStep

METRIC_COLUMNS = [
    "step", "phase", "member", "objective", "mse", "param_norm_sq", "grad_norm",
    "balance_error", "lr", "lam", "diverged", "converged",
]


@dataclass
class TrainResult:
    """What `fit` did. `metrics` has one row per (logged step, member), columns METRIC_COLUMNS
    (`diverged`/`converged`: the member is frozen from then on). Per member: `diverged_step` is
    the step whose objective was non-finite, `stopped_step` the step at which it met the stop
    rule or the finish's gradient tolerance or failed there (else the last step run), `failed`
    whether the finish's line search failed. `steps` counts the ensemble's steps."""

    metrics: pd.DataFrame
    diverged: list[bool]
    diverged_step: list[int | None]
    converged: list[bool]
    stopped_step: list[int]
    steps: int
    stopped_early: bool
    wall_time: float
    failed: list[bool]


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


def _converged(history: list[tuple[int, Tensor]], now: Tensor, balance: Tensor, step: int, rule: StopRule) -> Tensor:
    """(E,) bool: relative objective change over `rule.window` steps and balance within tolerance
    (a NaN balance, of a family without one, is no condition)."""
    past = [obj for s, obj in history if s <= step - rule.window]
    if step < rule.min_steps or not past:
        return torch.zeros_like(now, dtype=torch.bool)
    rel = (now - past[-1]).abs() / now.abs().clamp_min(1e-30)
    return (rel < rule.rel_tol) & ((balance < rule.balance_tol) | balance.isnan())


def fit(
    model: EnsembleModel,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    lam: list[float] | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> TrainResult:
    """Train `model` in place on (x, y) following `config`; returns metrics and flags.

    x: (N, d_in) shared by the members or (E, N, d_in); y likewise with d_out. `lam` overrides
    config.lam (one value per member). `seed` drives minibatch sampling. `progress=None` shows
    a bar only when stderr is a terminal. The balance error is logged (NaN otherwise) and
    re-balancing offered only for a HOMOGENEOUS family.
    """
    E, ref = model.members, model.reference
    if config.rebalance_every:
        model.require(HOMOGENEOUS, "train.rebalance_every")
    finish = config.phases[-1] if config.phases[-1].optimizer == "lbfgs" else None
    if finish is not None and finish.smoothing and not (isinstance(model, EnsembleMLP) and model.activation == "relu"):
        raise ConfigError(f"train.phases[-1].smoothing needs a ReLU MLP, not {model.describe()}")
    phases = config.phases[:-1] if finish is not None else config.phases
    x64, y64 = x.to(dtype=torch.float64, device=ref.device), y.to(dtype=torch.float64, device=ref.device)
    if config.adaptive_steps is not None:
        model.require(LAYER_STEPS, "train.adaptive_steps")
    x = x.to(dtype=ref.dtype, device=ref.device)
    y = y.to(dtype=ref.dtype, device=ref.device)
    n = x.shape[-2]
    model.check_input(x)
    if y.shape[-2] != n or y.shape[-1] != model.d_out:
        raise DataError(f"targets of shape {tuple(y.shape)} do not fit inputs with N = {n} and d_out = {model.d_out}")
    for name, t in (("x", x), ("y", y)):
        if not torch.isfinite(t).all():
            raise DataError(f"training {name} contains NaN or inf")
    as_vec = lambda v: torch.tensor(v, dtype=ref.dtype, device=ref.device)  # noqa: E731
    middle_caps = [_middle_caps(p, model) for p in phases]
    lam_values = lam if lam is not None else per_member(config.lam, E)
    lam_base = as_vec(lam_values)
    alive = torch.ones(E, dtype=torch.bool, device=ref.device)  # not diverged
    done = torch.zeros(E, dtype=torch.bool, device=ref.device)  # met the stop rule: frozen
    diverged_at = torch.full((E,), -1, dtype=torch.long, device=ref.device)
    stopped_at = [None] * E
    failed = torch.zeros(E, dtype=torch.bool, device=ref.device)  # the finish's line search failed: frozen
    gen = torch.Generator(device="cpu").manual_seed(seed)
    workspace = Workspace()  # the hot loop allocates no activation-sized tensor
    rows: list[dict] = []
    history: list[tuple[int, Tensor]] = []
    step = 0
    total_steps = sum(p.steps * len(p.smoothing or [0]) for p in config.phases)
    show = sys.stderr.isatty() if progress is None else progress
    start = time.perf_counter()

    def log(phase_idx: int, lr: Tensor, lam_t: Tensor) -> Tensor:
        """Record diagnostics at the current parameters, freeze members that meet the stop rule;
        returns the objective (E,) on the CPU in float64."""
        obj, err, norm, _ = model.objective_and_grads(x, y, lam_t, workspace, config.mse_reduction, flat)
        gnorm = sum(g.square().flatten(1).sum(1) for g in flat.grads).sqrt()
        bal = _balance(model, obj)
        now = obj.double().cpu()
        history.append((step, now))
        if config.stop is not None:
            newly = _converged(history, now, bal.double().cpu(), step, config.stop).to(ref.device) & alive & ~done
            for e in torch.nonzero(newly).flatten().tolist():
                stopped_at[e] = step
            done.logical_or_(newly)
        cols = {
            "objective": obj, "mse": err, "param_norm_sq": norm, "grad_norm": gnorm,
            "balance_error": bal, "lr": lr, "lam": lam_t, "diverged": ~alive, "converged": done,
        }
        values = {k: v.detach().cpu().tolist() for k, v in cols.items()}
        for e in range(E):
            rows.append({"step": step, "phase": phase_idx, "member": e} | {k: v[e] for k, v in values.items()})
        return now

    lam_t = lam_base.clone()  # the step's inputs, refilled in place before each step (bnrank.training.step)
    step_no = torch.zeros((), dtype=torch.long, device=ref.device)

    def train_step(opt, lr_elem: Tensor, xb: Tensor, yb: Tensor) -> None:
        """One step of every member still training; device work only (a CUDA graph replays it)."""
        obj, _, _, _ = model.objective_and_grads(xb, yb, lam_t, workspace, config.mse_reduction, flat)
        finite = torch.isfinite(obj)
        diverged_at.copy_(torch.where(alive & ~done & ~finite, step_no, diverged_at))
        alive.logical_and_(finite | done)
        opt.apply(flat.grad, lr_elem, flat.per_element(alive & ~done, "active"))

    with FlatParameters(model) as flat, _progress(show) as bar:
        task = bar.add_task("training", total=total_steps, info="")
        for phase_idx, phase in enumerate(phases):
            phase = resolve_phase(phase, model, x, y, lam_base, config.mse_reduction)  # curvature-scaled lr/momentum (schedules.py)
            opt = make_optimizer(phase, flat.data)
            lr_base = as_vec(per_member(phase.lr, E))
            lr_elem = flat.per_element(lr_base)  # constant through the phase; the schedule is a scalar factor
            batch = phase.batch_size
            perm = torch.randperm(n, generator=gen).to(ref.device) if batch else None  # drawn on the CPU: same batches on any device
            cursor = 0
            xb, yb = (x[..., :batch, :].clone(), y[..., :batch, :].clone()) if batch else (x, y)
            run_step = GraphedStep(partial(train_step, opt, lr_elem, xb, yb), ref.device)
            caps = middle_caps[phase_idx]
            if step == 0:
                log(phase_idx, lr_base * lr_factor(phase, 0), lam_base * lam_factor(phase, 0))
            for t in range(phase.steps):
                torch.mul(lam_base, lam_factor(phase, t), out=lam_t)
                step_no.fill_(step)
                if batch:
                    if cursor + batch > n:
                        perm, cursor = torch.randperm(n, generator=gen).to(ref.device), 0
                    idx = perm[cursor : cursor + batch]
                    cursor += batch
                    torch.index_select(x, -2, idx, out=xb)
                    torch.index_select(y, -2, idx, out=yb)
                opt.prepare(lr_factor(phase, t))
                run_step()
                step += 1
                if caps is not None:
                    model.cap_middle_rank_(caps, alive & ~done)
                if config.rebalance_every and step % config.rebalance_every == 0:
                    model.rebalance_(active=alive & ~done)
                if config.adaptive_steps is not None and step % config.adaptive_steps.every == 0:
                    model.adapt_steps_(x, config.adaptive_steps, alive & ~done)
                if step % config.log_every == 0 or t == phase.steps - 1:
                    now = log(phase_idx, lr_base * lr_factor(phase, t), lam_t)
                    training = (alive & ~done).cpu()
                    info = f"objective {now[training].mean().item():.4g}" if training.any() else "all members stopped"
                    bar.update(task, completed=step, info=info)
                    if not training.any():
                        break
            if not (alive & ~done).any():
                break
        if finish is not None and alive.any():
            lam64 = torch.tensor(lam_values, dtype=torch.float64, device=ref.device)
            step = _finish(model, x64, y64, lam64, finish, len(phases), config, alive, done, stopped_at, failed,
                           rows, step, lambda info: bar.update(task, completed=step, info=info))
        bar.update(task, completed=total_steps)

    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    div_at = diverged_at.cpu().tolist()
    return TrainResult(
        metrics=metrics,
        diverged=[d >= 0 for d in div_at],
        diverged_step=[d if d >= 0 else None for d in div_at],
        converged=done.cpu().tolist(),
        stopped_step=[s if s is not None else step for s in stopped_at],
        steps=step,
        stopped_early=step < total_steps,
        wall_time=time.perf_counter() - start,
        failed=failed.cpu().tolist(),
    )


def _middle_caps(phase, model: EnsembleModel) -> Tensor | None:
    """The phase's `middle_rank` caps as an (E,) long tensor (−1: no cap), None without any."""
    if phase.middle_rank is None:
        return None
    if not isinstance(model, EnsembleMLP):
        raise ConfigError(f"train.phases[].middle_rank caps an MLP's middle weight, not {model.describe()}")
    caps = phase.middle_rank if isinstance(phase.middle_rank, list) else [phase.middle_rank] * model.members
    if len(caps) != model.members:
        raise ConfigError(f"train.phases[].middle_rank has {len(caps)} values for {model.members} members")
    return torch.tensor([-1 if c is None else c for c in caps], dtype=torch.long, device=model.reference.device)


def _balance(model: EnsembleModel, like: Tensor) -> Tensor:
    """The balance error per member (E,), NaN for a family without one (not HOMOGENEOUS)."""
    return model.balance_error() if model.has(HOMOGENEOUS) else torch.full_like(like, float("nan"))


def _finish(model, x: Tensor, y: Tensor, lam: Tensor, phase, phase_idx: int, config: TrainConfig, alive: Tensor,
            done: Tensor, stopped_at: list, failed: Tensor, rows: list, step: int, show) -> int:
    """Run the "lbfgs" phase on the members that have not diverged, in float64 (the model is
    promoted in place), one L-BFGS run per smoothing stage (one run without smoothing), then up
    to `phase.escapes` rounds of leaving saddles (bnrank.training.escape) each followed by the
    stages again on the members that moved; updates done/failed/stopped_at and appends metric
    rows (the objective itself, also while smoothing); returns the step count after it."""
    model.double()
    evaluate = ModelObjective(model, x, y, lam, config.mse_reduction)
    stages = phase.smoothing or [0.0]
    theta = evaluate.theta()
    converged = torch.zeros_like(done)

    def run_stages(theta: Tensor, frozen: Tensor, step: int) -> tuple[Tensor, Tensor, int]:
        """(θ, converged, step) after every stage from θ with `frozen` members held."""
        converged = torch.zeros_like(done)
        for stage, delta in enumerate(stages):
            evaluate.delta = delta
            opt = LBFGS(evaluate, theta, lam, phase.history, phase.gtol, frozen | failed)
            last = stage == len(stages) - 1

            def log(alpha: Tensor) -> None:
                evaluate.delta = 0.0
                f, g = evaluate(opt.theta)  # the objective itself at the accepted parameters
                evaluate.delta = delta
                cols = {
                    "objective": f, "mse": evaluate.mse, "param_norm_sq": evaluate.norm_sq, "grad_norm": g.norm(dim=1),
                    "balance_error": _balance(model, f), "lr": alpha, "lam": opt.lam, "diverged": ~alive,
                    "converged": done | (opt.converged if last else converged),
                }
                values = {k: v.detach().cpu().tolist() for k, v in cols.items()}
                for e in range(model.members):
                    rows.append({"step": step, "phase": phase_idx, "member": e} | {k: v[e] for k, v in values.items()})

            if step == 0:
                log(torch.zeros_like(opt.f))
            for t in range(phase.steps):
                if not opt.live().any():
                    break
                before = opt.failed | (opt.converged & last)
                alpha = opt.iterate()
                step += 1
                for e in torch.nonzero((opt.failed | (opt.converged & last)) & ~before).flatten().tolist():
                    stopped_at[e] = step
                if step % config.log_every == 0 or t == phase.steps - 1 or not opt.live().any():
                    log(alpha)
                    width = f"δ = {delta:.0e}, " if delta else ""
                    show(f"{width}relative gradient {opt.rel_grad()[opt.live()].max().item():.2e}" if opt.live().any()
                         else "all members stopped")
            theta = opt.theta
            failed.logical_or_(opt.failed & alive)
            converged = opt.converged
        evaluate.delta = 0.0
        return theta, converged, step

    theta, converged, step = run_stages(theta, ~alive, step)
    for _ in range(phase.escapes):
        evaluate.load(theta)
        moved = leave_saddles(model, x, y, lam, config.mse_reduction, theta, alive & ~failed, finish_kink_tol(config))
        if not moved.any():
            break
        show(f"leaving {int(moved.sum())} saddles")
        theta, again, step = run_stages(theta, ~moved, step)
        converged = torch.where(moved, again, converged)
    evaluate.load(theta)
    done.logical_or_(converged)
    return step
