"""Learning-rate and λ schedules of a phase, as multiplicative factors of the step in the phase."""

from __future__ import annotations

import math


def lr_factor(phase, step: int) -> float:
    """Factor on the phase's peak lr at `step` (0-based): warm-up, then the schedule."""
    if step < phase.warmup_steps:
        return (step + 1) / phase.warmup_steps
    span = max(phase.steps - phase.warmup_steps, 1)
    s = (step - phase.warmup_steps) / span
    lo = phase.final_lr_factor
    if phase.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * s))
    if phase.schedule == "linear":
        return 1 - (1 - lo) * s
    return 1.0


def lam_factor(phase, step: int) -> float:
    """Factor on λ at `step`: geometric from lam_factor_start to 1 over lam_anneal_fraction."""
    if phase.lam_factor_start == 1.0:
        return 1.0
    span = phase.lam_anneal_fraction * phase.steps
    s = min(step / span, 1.0)
    return phase.lam_factor_start ** (1 - s)
