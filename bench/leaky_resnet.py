"""Leaky ResNet training step vs the MLP's at the same sizes (bench/README.md, "Leaky ResNet").

Times one `objective_and_grads` call (forward + backward of the regularized objective, all
members): the Leaky ResNet's hand-written path, its generic torch.func path, and the MLP's
hand-written backprop, for E members of width w, L layers, d_in = d_out = 30, N points, float32.
Medians of interleaved repeats.

    .venv/bin/python bench/leaky_resnet.py [--members 4] [--n 1000] [--width 100] [--depth 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bnrank.models import EnsembleLeakyResNet, EnsembleMLP
from bnrank.models import functional as F
from bnrank.training.backprop import Workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = 30
    x, y = torch.randn(a.n, d), torch.randn(a.n, d)
    lam = torch.full((a.members,), 1e-3)
    leaky = EnsembleLeakyResNet.init(a.members, d, d, a.width, a.depth, 5.0)
    mlp = EnsembleMLP.init(a.members, [d] + [a.width] * (a.depth - 1) + [d])
    ws = Workspace()
    variants = {
        "mlp (hand-written)": lambda: mlp.objective_and_grads(x, y, lam, ws),
        "leaky-resnet (hand-written)": lambda: leaky.objective_and_grads(x, y, lam),
        "leaky-resnet (torch.func)": lambda: F.objective_and_grads(leaky, x, y, lam),
    }
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(a.repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            for _ in range(a.calls):
                fn()
            times[name].append((time.perf_counter() - t) / a.calls)
    base = statistics.median(times["mlp (hand-written)"])
    print(f"E={a.members} N={a.n} w={a.width} L={a.depth} threads={torch.get_num_threads()} torch {torch.__version__}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {1e3 * med:.1f} ms | {med / base:.2f}× |")


if __name__ == "__main__":
    main()
