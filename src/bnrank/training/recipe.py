"""The default training recipe: reach the regularized minimum of a deep ReLU net in minutes.

Measured on the rank-2 composition task (bench/README.md, "Convergence"; `bench/convergence.py`
re-measures it). Three phases, each for a reason that was measured, not assumed:

1. **Adam, λ annealed from above** (`adam_steps`, lr `default_adam_lr(L)` = 3e-3·min(1, 8/L)²
   cosine down to 3 %; at depth 16 lr 3e-3 made a member's fit blow up mid-phase, at depth 24 it
   collapsed the Figure 1 nets to θ = 0, and 3e-3·8/L ended the depth-16–24 ones up to 40 %
   higher in objective than (8/L)², one seed of six 2 % lower, bench/README.md "Adam's step at
   depth"). Adam's per-weight
   normalization is what moves the random bulk of the initialization off quickly and lets the
   network choose its bottleneck; starting at λ·`lam_start_factor` (at most `LAM_START_MAX`)
   and annealing geometrically to λ over the first half shrinks the bulk faster and lands in a
   lower-rank basin. Adam cannot finish the job: near the minimum its objective keeps
   fluctuating, and 50k Adam steps end above where the GD phases below get in 20k.
2. **Heavy-ball GD at a curvature-scaled step** (`lr_sharpness` 2, momentum 0.9995). The
   Hessian's top eigenvalue h_max is ~10³ here while the penalty's curvature is 2λ ~ 10⁻³, so
   plain GD would need ~10⁶ steps; heavy ball at lr = c/h_max (stable for c < 2(1 + μ)) with
   μ close to 1 moves the slow directions with an effective step lr/(1 − μ). h_max is measured
   by power iteration when the phase starts, per member (`bnrank.training.schedules`).
3. **Polish: heavy-ball GD at lr = 1.5/h_max, momentum 0.9995**, with the stop rule.
   Re-measuring h_max guards against the sharpening seen during phase 2 (h_max grew up to 1.8×
   at depth 16); the smaller step damps the edge-of-stability wobble of phase 2 (at c = 3 the
   objective wobbled by ~1e-4 relative and never settled). c = 1 with μ = 0.999 here ended 2 %
   higher after the same 24k steps at depth 8.

The stop rule (checked only in phase 3): relative objective change below `rel_tol` over
`window` steps and neuron balancedness error below 1 %. Re-balancing (`rebalance_every`) is
off: the GD phases balance the neurons by themselves (error < 0.1 %), and re-balancing during
Adam made its moments stale without a better end point.

Initialization: He scaled by `default_init_scale(depth)` = 2^(−3/L), so the net's end-to-end gain
at init is ~1/8 whatever the depth: well below He init's ‖θ‖² (at depth 16 He init carries
‖θ‖² ~ 10³, most of which Adam must first remove), large enough that the data gradient beats the
penalty at the first step (at init scale 0.5, depth 16 collapses to θ = 0; at 2^(−12/L), depth
24 of Figure 1 does). On the Figure 1 networks, 2^(−3/L) and 2^(−5/L) ended as low as 2^(−8/L)
or lower at every depth 4–28, most at depths 20–28, where the smaller init leaves the networks
in a worse basin (bench/README.md "Init scale at depth").
"""

from __future__ import annotations

import math
from typing import Any

from bnrank.config import MseReduction, Phase, StopRule, TrainConfig
from bnrank.training.objective import mse_scale

LAM_START_MAX = 0.01
"""The annealed λ starts at min(λ · lam_start_factor, LAM_START_MAX) (never below λ), λ in the
"sum" convention of the objective: for a "mean" objective the cap is LAM_START_MAX / d_out (its
λ is worth d_out times more, bnrank.training.objective). Above the cap, the small init's data
gradient loses to the penalty and the net collapses to θ = 0 (seen at a "mean" start of 0.01,
every depth 6–24 of the Figure 1 task)."""


def _require_depth(depth: int) -> None:
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")


def middle_layer(depth: int) -> int:
    """1-based index of the "middle" weight matrix W_{L/2} whose rank the figures report: ⌈L/2⌉."""
    _require_depth(depth)
    return math.ceil(depth / 2)


def default_init_scale(depth: int) -> float:
    """He-init multiplier 2^(−3/L): end-to-end gain ~1/8 at init for every depth L."""
    _require_depth(depth)
    return 2.0 ** (-3.0 / depth)


def default_adam_lr(depth: int) -> float:
    """Peak Adam lr of the recipe's first phase at `depth`: 3e-3·min(1, 8/L)²."""
    _require_depth(depth)
    return 3e-3 * min(1.0, 8.0 / depth) ** 2


def default_phase_steps(depth: int) -> tuple[int, int, int]:
    """(adam, descent, polish) steps of the recipe at `depth`: 4000, 8000, 12000 times max(1, L/8)."""
    scale = max(1.0, depth / 8)
    return int(4000 * scale), int(8000 * scale), int(12000 * scale)


def default_train_config(
    depth: int,
    lam: float | list[float] = 1e-3,
    *,
    adam_steps: int | None = None,
    descent_steps: int | None = None,
    polish_steps: int | None = None,
    adam_lr: float | None = None,
    lam_start_factor: float = 10.0,
    rel_tol: float = 1e-5,
    window: int = 1000,
    balance_tol: float = 0.01,
    log_every: int = 200,
    mse_reduction: MseReduction = "sum",
    d_out: int | None = None,
) -> TrainConfig:
    """The default TrainConfig for a net of `depth` weight matrices at regularization `lam`.

    Phase lengths default to functions of the depth (deeper nets need more steps);
    `polish_steps` is a cap, training stops earlier when the stop rule holds. With
    `mse_reduction` "mean" (bnrank.training.objective), `d_out` (the output dimension) is needed to
    express the λ start cap (LAM_START_MAX) in that convention.
    """
    _require_depth(depth)
    lams = lam if isinstance(lam, list) else [lam]
    if not lams or min(lams) < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    adam_lr = adam_lr if adam_lr is not None else default_adam_lr(depth)
    steps = default_phase_steps(depth)
    adam_steps = adam_steps if adam_steps is not None else steps[0]
    descent_steps = descent_steps if descent_steps is not None else steps[1]
    polish_steps = polish_steps if polish_steps is not None else steps[2]
    if mse_reduction == "mean" and d_out is None:
        raise ValueError("mse_reduction 'mean' needs d_out (the λ start cap depends on it)")
    lam_cap = LAM_START_MAX * mse_scale(mse_reduction, d_out or 1)
    lam_max = max(lams)
    start = min(lam_start_factor, lam_cap / lam_max) if lam_max > 0 else 1.0
    start = max(start, 1.0)
    phases = [
        Phase(optimizer="adam", steps=adam_steps, lr=adam_lr, schedule="cosine", final_lr_factor=0.03,
              lam_factor_start=start, lam_anneal_fraction=0.5),
        Phase(optimizer="gd", steps=descent_steps, lr_sharpness=2.0, momentum=0.9995),
        Phase(optimizer="gd", steps=polish_steps, lr_sharpness=1.5, momentum=0.9995),
    ]
    stop = StopRule(window=window, rel_tol=rel_tol, balance_tol=balance_tol,
                    min_steps=adam_steps + descent_steps + window)
    return TrainConfig(lam=lam, mse_reduction=mse_reduction, phases=phases, log_every=log_every, stop=stop)


def apply_recipe(config: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A run-config dict with `model.init_scale` and `train` set by the recipe for its depth and λ.

    Keeps the dict's task, model depth/width, members and seeds; `train.lam` (default 1e-3),
    `train.mse_reduction` and `train.log_every` are kept if present. kwargs go to
    `default_train_config`.
    """
    import copy

    from bnrank.config import RunConfig, validate
    from bnrank.tasks import make_task

    out = copy.deepcopy(config)
    model = out.setdefault("model", {})
    depth = int(model.get("depth", 8))
    train = out.get("train", {}) or {}
    lam = train.get("lam", 1e-3)
    if "log_every" in train:
        kwargs.setdefault("log_every", train["log_every"])
    if train.get("mse_reduction", "sum") == "mean":
        kwargs.setdefault("mse_reduction", "mean")
        kwargs.setdefault("d_out", make_task(validate(RunConfig, out).task).d_out)
    model["init_scale"] = default_init_scale(depth)
    out["train"] = default_train_config(depth, lam, **kwargs).model_dump(mode="json", exclude_defaults=True)
    out["train"]["lam"] = lam
    return out
