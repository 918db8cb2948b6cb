"""Memory a run needs, estimated from its config, checked before anything is allocated.

`train_estimate(cfg)` and `analyze_estimate(...)` return a `MemoryEstimate`: bytes per part of
the peak, from the sizes alone. With E members, P parameters per member, b bytes per element
(4 for float32, 8 for float64), N training points, B a phase's batch size and
S = Σ_ℓ d_ℓ + Σ_{ℓ<L} d_ℓ (the widths of a forward pass and of its backward signal):

    parameters   E·P·b · (4 + optimizer state: Adam 3, GD/SGD 1, 2 with momentum): the model's
                 tensors, the trainer's flat buffer, its gradient and the copies made around them
    activations  E·(N + B)·S·b: the full-batch pass of the logged objective and a phase's
                 minibatch pass each keep their buffers (bnrank.training.backprop.Workspace);
                 N counts 5 times with curvature-scaled steps (Hessian-vector products);
                 plus E·N_test·max_ℓ d_ℓ·b for the test error
    data         the task's tensors (float64) and their copy in the training dtype
    task         building the task (a composition task's hidden layers, an exact GP's N×N
                 kernel: 20·N² bytes measured); freed before training, so the peak is
                 data + max(task, training)

and for `bnrank.analyze` (always float64) on N points, d_out outputs:

    activations  3·E·N·Σ_ℓ d_ℓ·8 (pre-activations, post-activations, layer inputs)
    jacobians    E·N·d_out·(2·max_ℓ d_ℓ + 2·d_in)·8 (two layer Jacobians at a time, then Jf and
                 its SVD's copy)
    curvature    30·P·8 + 2·E·N·Σ_ℓ d_ℓ·8 (one member's Lanczos vectors at a time, the
                 Jacobian-vector products); after the Jacobians are freed, the larger counts

Against the growth of the peak resident memory of small runs (tests/test_memory.py, float32
Adam, float64 SGD with momentum, an analysis) the estimate came out 0.95, 0.92 and 1.16 times
the measured value; the test allows a factor 1.6 either way. `check_memory` compares an
estimate with what is allowed, `--max-memory` or else the memory available at the time (the
cgroup's limit or /proc/meminfo's MemAvailable; the free memory of the GPU for a CUDA device),
and raises ConfigError with the estimate when it does not fit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bnrank.errors import ConfigError

BYTES = {"float32": 4, "float64": 8}
ANALYZE_BYTES = 8


@dataclass
class MemoryEstimate:
    """Bytes per part (`parts`); the peak is `total` (`transient` parts overlap, the largest counts)."""

    parts: dict[str, int]
    transient: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        steady = sum(v for k, v in self.parts.items() if k not in self.transient)
        return steady + max([v for k, v in self.parts.items() if k in self.transient], default=0)

    def times(self, k: int) -> "MemoryEstimate":
        """The memory of `k` such runs at once."""
        return MemoryEstimate({name: k * v for name, v in self.parts.items()}, self.transient)

    def describe(self) -> str:
        """"2.1 GB (activations 1.6 GB, parameters 400 MB, ...)": the total and its largest parts."""
        parts = sorted(self.parts.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts if v >= 0.01 * self.total)
        return f"{format_bytes(self.total)} ({shown})"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE]\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8G', '512MB', '2.5GiB', '1e9' → bytes (K, M, G, T: powers of 1000; with an i, of 1024)."""
    match = _SIZE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--max-memory {text!r}: expected a size such as 8G, 512MB or 2GiB")
    number, prefix, suffix = match.groups()
    base = 1024 if suffix and suffix.lower() == "ib" else 1000
    return int(float(number) * base ** "_kmgt".index(prefix.lower() or "_"))


def task_dims(task) -> tuple[int, int] | None:
    """(d_in, d_out) of a task config, None for a kind whose sizes come from data."""
    if task.kind == "symmetry":
        return 3, 2 * task.path_length
    d_in, d_out = getattr(task, "d_in", None), getattr(task, "d_out", None)
    return (d_in, d_out) if d_in and d_out else None


def _task_build(task, d_in: int, d_out: int) -> int:
    """Bytes of building the task's tensors (float64), beyond the tensors themselves."""
    n = task.n_train + task.n_test
    if task.kind == "composition":
        return 8 * n * (task.latent_dim + 2 * task.hidden + 2 * (d_in + d_out))
    if task.kind == "matern-composition":
        return 20 * n * n + 8 * n * 2 * (d_in + task.rank + d_out)
    return 8 * n * 4 * (d_in + d_out)


def _params(dims: list[int]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def layer_dims(cfg) -> list[int] | None:
    """[d_in, width, ..., width, d_out] of a run config's fully connected net; None when the
    task's sizes come from data or the model is not a width × depth net."""
    sizes = task_dims(cfg.task)
    width, depth = getattr(cfg.model, "width", None), getattr(cfg.model, "depth", None)
    if sizes is None or width is None or depth is None:
        return None
    return [sizes[0]] + [width] * (depth - 1) + [sizes[1]]


def train_estimate(cfg, members: int | None = None) -> MemoryEstimate | None:
    """Peak bytes of training run config `cfg` (with `members` members, default its own);
    None when its sizes are not all in the config (`layer_dims`)."""
    dims = layer_dims(cfg)
    if dims is None:
        return None
    d_in, d_out = dims[0], dims[-1]
    E, b = members or cfg.members, BYTES[cfg.dtype]
    n, n_test = cfg.task.n_train, cfg.task.n_test
    width_sum = sum(dims[1:]) + sum(dims[1:-1])
    state = max(3 if p.optimizer == "adam" else 1 + (p.momentum != 0) for p in cfg.train.phases)
    batch = max(p.batch_size or 0 for p in cfg.train.phases)
    curvature = 5 if any(p.lr_sharpness is not None for p in cfg.train.phases) else 1
    return MemoryEstimate({
        "parameters": E * _params(dims) * b * (4 + state),
        "activations": E * (curvature * n + batch) * width_sum * b + E * n_test * max(dims) * b,
        "data": (n + n_test) * (d_in + d_out) * 8 + n * (d_in + d_out) * b,
        "task": _task_build(cfg.task, d_in, d_out),
    }, transient={"task"})


def analyze_estimate(members: int, dims: list[int], points: int, curvature: bool = False) -> MemoryEstimate:
    """Peak bytes of `bnrank.analyze` of `members` networks of widths `dims` on `points` inputs."""
    E, N, b = members, points, ANALYZE_BYTES
    layer_sum = sum(dims[1:])
    parts = {
        "parameters": E * _params(dims) * b,
        "activations": 3 * E * N * layer_sum * b,
        "jacobians": E * N * dims[-1] * (2 * max(dims[1:]) + 2 * dims[0]) * b,
        "inputs": N * (dims[0] + dims[-1]) * b,
    }
    if curvature:
        parts["curvature"] = 30 * _params(dims) * b + 2 * E * N * layer_sum * b
    return MemoryEstimate(parts, transient={"jacobians", "curvature"})


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes of host memory this process can still take: MemAvailable, capped by the cgroup's
    limit minus its usage (cgroup v2); None when neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit, usage = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        found.append(max(limit - usage, 0))
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def _device_memory(device) -> tuple[int | None, str]:
    """(bytes available on `device`, how it is described)."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0], "the GPU has free"
    return available_memory(), "this machine has available"


def check_memory(estimate: MemoryEstimate | None, what: str, max_memory: int | None = None, device="cpu") -> None:
    """Raise ConfigError when `estimate` exceeds `max_memory` (bytes) or, without it, the memory
    available on `device` now. `what` names the work ("training runs/x")."""
    if estimate is None:
        return
    if max_memory is not None:
        allowed, source = max_memory, "--max-memory allows"
    else:
        allowed, source = _device_memory(device)
        if allowed is None:
            return
    if estimate.total > allowed:
        raise ConfigError(
            f"{what} needs about {estimate.describe()} but {source} {format_bytes(allowed)}: "
            "make it smaller (members, width, depth, n_train, batch_size) or raise --max-memory"
        )
