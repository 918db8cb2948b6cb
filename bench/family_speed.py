"""The model-family seam's cost: CPU seconds per training step and per analyze call of the MLP,
and the trainer on the generic torch.func gradient (bnrank.models.functional) instead of the
MLP's hand-written backprop.

Process CPU time on one torch thread (robust to other load on a shared machine, unlike wall
time), medians over `--rounds` interleaved rounds. Training: full-batch Adam, E = 4, depth 12,
width 100, N = 500, d_in = d_out = 20. analyze: depth 25, width 200, N = 300, one member.

    .venv/bin/python bench/family_speed.py [--rounds 3]

To compare two commits side by side, run it alternately from a worktree of each, e.g.
``git worktree add /tmp/old COMMIT`` and ``(cd /tmp/old && PYTHONPATH=src python bench/family_speed.py)``;
a tree without the seam reports the fast path and analyze only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bnrank import EnsembleMLP, analyze, fit
from bnrank.config import TrainConfig

try:
    from bnrank.models import EnsembleModel

    class GenericMLP(EnsembleMLP):
        """The MLP trained on the seam's generic gradient."""

        objective_and_grads = EnsembleModel.objective_and_grads
except ImportError:  # a tree without the model-family seam
    GenericMLP = None


def _config(steps: int) -> TrainConfig:
    return TrainConfig(lam=1e-3, log_every=10**9, phases=[{"optimizer": "adam", "steps": steps, "lr": 1e-3}])


def step_seconds(family, x, y, steps: int = 40) -> float:
    model = family.init(4, [20] + [100] * 11 + [20], seeds=[0, 1, 2, 3])
    fit(model, x, y, _config(5), progress=False)
    start = time.process_time()
    fit(model, x, y, _config(steps), progress=False)
    return (time.process_time() - start) / steps


def analyze_seconds(gen: torch.Generator) -> float:
    net = EnsembleMLP.init(1, [20] + [200] * 24 + [20], seeds=[0])
    x, y = torch.randn(300, 20, generator=gen), torch.randn(300, 20, generator=gen)
    analyze(net, x[:20], Y=y[:20], lam=1e-3)
    start = time.process_time()
    analyze(net, x, Y=y, lam=1e-3)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 20, generator=gen), torch.randn(500, 20, generator=gen)
    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        samples.setdefault("fast step (ms)", []).append(1000 * step_seconds(EnsembleMLP, x, y))
        if GenericMLP is not None:
            samples.setdefault("generic step (ms)", []).append(1000 * step_seconds(GenericMLP, x, y))
        samples.setdefault("analyze (s)", []).append(analyze_seconds(gen))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    for name, value in medians.items():
        print(f"{name:<20} {value:8.3f}")
    if GenericMLP is not None:
        print(f"{'generic / fast':<20} {medians['generic step (ms)'] / medians['fast step (ms)']:8.2f}")


if __name__ == "__main__":
    main()
