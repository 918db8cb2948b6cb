"""How long `bnrank.analyze` takes on a depth-25, width-200 network with N = 1,000 inputs.

d_in = d_out = 20, one He-initialised member with random biases, Gaussian X and Y, λ = 1e-3.
Times every stage (`Analysis.timings`), median over repeats: the default analysis
(curvature=False) `--repeats` times, then with curvature=True (NTK and Hessian top eigenvalues)
`--curvature-repeats` times. Target: the default analysis in ≤ 10 s on 2 CPU cores.

    .venv/bin/python bench/analyze_speed.py [--threads 2] [--repeats 3] [--curvature-repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bnrank import EnsembleMLP, analyze

DEPTH, WIDTH, N, D_IN, D_OUT, LAM, TARGET_S = 25, 200, 1000, 20, 20, 1e-3, 10.0
STAGES = ["forward", "weights", "activations", "jacobian", "ntk_trace", "ntk_top", "hessian_top", "assemble"]


def problem() -> tuple[EnsembleMLP, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    net = EnsembleMLP.init(1, [D_IN] + [WIDTH] * (DEPTH - 1) + [D_OUT], seeds=[0], dtype=torch.float32)
    with torch.no_grad():
        for b in net.biases:
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))
    x = torch.randn(N, D_IN, generator=gen)
    y = torch.randn(N, D_OUT, generator=gen)
    return net, x, y


def measure(curvature: bool, repeats: int, net, x, y) -> dict[str, float]:
    """Median seconds of every stage and of the whole call over `repeats` calls."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = analyze(net, x, Y=y, lam=LAM, curvature=curvature)
        runs.append(result.timings | {"total": time.perf_counter() - start})
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--curvature-repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net, x, y = problem()
    analyze(net, x[:10])  # warm-up (first-call overheads)
    load_before = os.getloadavg()[0]
    plain = measure(False, args.repeats, net, x, y)
    curved = measure(True, args.curvature_repeats, net, x, y) if args.curvature_repeats else {}
    print(f"analyze: depth {DEPTH}, width {WIDTH}, N {N}, d_in {D_IN}, d_out {D_OUT}; torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {load_before:.1f} → {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<14}{'default (s)':>14}{'curvature (s)':>16}")
    for key in STAGES + ["total"]:
        row = f"{key:<14}{plain[key]:>14.2f}"
        print(row + (f"{curved[key]:>16.2f}" if curved else ""))
    verdict = "met" if plain["total"] <= TARGET_S else "missed"
    print(f"target: default analysis ≤ {TARGET_S:.0f} s: {verdict} ({plain['total']:.2f} s, median of {args.repeats})")


if __name__ == "__main__":
    main()
