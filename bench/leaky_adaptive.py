"""Uniform vs adaptive layer steps on a Leaky ResNet (bench/README.md, "Leaky ResNet").

Trains one member on the 30 → 3 → 30 teacher (task.kind teacher) with uniform steps ρ_ℓ = 1/L
and with train.adaptive_steps, same seed, one torch thread, Adam with a cosine schedule, and
prints per variant: final objective, MSE, R(θ), training seconds, the max/min relative-jump
ratio, the bottleneck rank and −(2/L̃)H (bnrank.measure.leaky_measurements) and the final ρ.

    .venv/bin/python bench/leaky_adaptive.py [--effective-depth 8] [--steps 8000] [--n 300] [--width 40] [--depth 10]
"""

from __future__ import annotations

import argparse

import torch

import bnrank
from bnrank.measure.leaky import leaky_measurements


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--effective-depth", type=float, default=8.0)
    ap.add_argument("--lam", type=float, default=0.002)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--width", type=int, default=40)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--init-scale", type=float, default=0.3)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for variant in ("uniform", "adaptive"):
        cfg = {"members": 1,
               "task": {"kind": "teacher", "n_train": a.n, "n_test": 0},
               "model": {"kind": "leaky-resnet", "depth": a.depth, "width": a.width,
                         "effective_depth": a.effective_depth, "init_scale": a.init_scale},
               "train": {"lam": a.lam, "log_every": 500, "phases": [{"optimizer": "adam", "steps": a.steps, "lr": 3e-3,
                                                                     "schedule": "cosine", "final_lr_factor": 0.01}]}}
        if variant == "adaptive":
            cfg["train"]["adaptive_steps"] = {"every": a.every, "rate": a.rate}
        run = bnrank.train(cfg, progress=False)
        m = run.members.iloc[0]
        net = leaky_measurements(run.model, run.task.x_train, k_star=3)["network"].iloc[0]
        print(f"| {variant} | {m.objective:.4f} | {m.mse:.4f} | {m.param_norm_sq:.1f} | {run.summary['wall_time_s']:.0f} s | "
              f"{net.max_jump_ratio:.2f} | {net.bottleneck_rank} | {net.neg2h:.1f} | "
              f"{' '.join(f'{r:.3f}' for r in run.model.steps.tolist())} |")


if __name__ == "__main__":
    main()
