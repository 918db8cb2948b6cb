"""Training throughput: the ensemble trainer vs a plain per-network PyTorch loop vs matmul peak,
and the trainer on the model family's generic torch.func gradient instead of the MLP's
hand-written backprop ("generic E=4").

Workloads: Figure-1 size (depth 12, width 100, N = 500, d_in = d_out = 20) and a
deep, small-batch one (depth 25, N = 200). Full-batch Adam on the regularized objective.

FLOPs counted per network-step: 6·N·Σ_ℓ fan_in·fan_out (forward 2·N·fan_in·fan_out per layer,
backward twice that); elementwise work is not counted, so % of peak is an honest lower bound
of how close to pure matmul speed a step runs. Peak = the best float32 GFLOP/s of large square
matmuls measured in the same run. Timings are medians of interleaved repeats (the machines are
shared and noisy: compare the ratios, not the absolute numbers).

    .venv/bin/python bench/throughput.py            # both workloads, E = 1, 4, 16
    .venv/bin/python bench/throughput.py --quick    # fewer steps and repeats
    python bench/throughput.py --device cuda        # on a GPU (peak: float32 without TF32)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from bnrank import EnsembleMLP, fit
from bnrank.config import TrainConfig
from bnrank.models import EnsembleModel


class GenericMLP(EnsembleMLP):
    """The MLP with the seam's generic gradient (bnrank.models.functional), not its fast path."""

    objective_and_grads = EnsembleModel.objective_and_grads


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, repeats: int = 5) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_network_step(dims: list[int], n: int) -> float:
    return 6.0 * n * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def time_ensemble(members: int, dims: list[int], x, y, steps: int, family: type[EnsembleMLP] = EnsembleMLP) -> float:
    """Seconds per step of `bnrank.fit` (Adam, full batch) for an ensemble of `members`."""
    model = family.init(members, dims, seeds=list(range(members))).to(device=x.device)
    cfg = TrainConfig(lam=1e-3, log_every=10**9, phases=[{"optimizer": "adam", "steps": steps, "lr": 1e-3}])
    fit(model, x, y, cfg.model_copy(update={"phases": [cfg.phases[0].model_copy(update={"steps": 5})]}), progress=False)
    sync(x.device)
    t = time.perf_counter()
    fit(model, x, y, cfg, progress=False)
    return (time.perf_counter() - t) / steps


def time_plain_loop(members: int, dims: list[int], x, y, steps: int, lam: float = 1e-3) -> float:
    """Seconds per step of training `members` nn.Sequential nets one after another (torch Adam)."""
    nets = []
    for e in range(members):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(a, b))
        net = nn.Sequential(*layers).to(x.device)
        nets.append((net, torch.optim.Adam(net.parameters(), lr=1e-3)))

    def step(net, opt):
        opt.zero_grad(set_to_none=True)
        loss = (net(x) - y).square().sum(1).mean() + lam * sum(p.square().sum() for p in net.parameters())
        loss.backward()
        opt.step()

    for net, opt in nets:
        for _ in range(3):
            step(net, opt)
    sync(x.device)
    t = time.perf_counter()
    for _ in range(steps):
        for net, opt in nets:
            step(net, opt)
    sync(x.device)
    return (time.perf_counter() - t) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps, repeats = (30, 2) if args.quick else (100, 3)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    workloads = [("depth 12, width 100, N 500", 12, 100, 500), ("depth 25, width 100, N 200", 25, 100, 200)]
    for name, depth, width, n in workloads:
        dims = [20] + [width] * (depth - 1) + [20]
        x, y = torch.randn(n, 20, device=device), torch.randn(n, 20, device=device)
        flops = flops_per_network_step(dims, n)
        samples: dict[str, list[float]] = {}
        peaks = []
        for _ in range(repeats):  # interleaved, so every variant sees the same machine load
            peaks.append(matmul_peak_gflops(device))
            for e in (1, 4, 16):
                samples.setdefault(f"ensemble E={e}", []).append(e / time_ensemble(e, dims, x, y, steps))
            samples.setdefault("generic E=4", []).append(4 / time_ensemble(4, dims, x, y, steps // 2, GenericMLP))
            samples.setdefault("plain loop", []).append(4 / time_plain_loop(4, dims, x, y, steps // 2))
        peak = statistics.median(peaks)
        print(f"\n{name}: {flops / 1e6:.1f} MFLOP per network-step, matmul peak {peak:.1f} GFLOP/s")
        print(f"{'variant':<16} {'net-steps/s':>12} {'GFLOP/s':>9} {'% peak':>7} {'vs plain':>9}")
        plain = statistics.median(samples["plain loop"])
        for variant, values in samples.items():
            rate = statistics.median(values)
            gf = rate * flops / 1e9
            print(f"{variant:<16} {rate:>12.1f} {gf:>9.1f} {100 * gf / peak:>6.0f}% {rate / plain:>8.2f}x")


if __name__ == "__main__":
    main()
