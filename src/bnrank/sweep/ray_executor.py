"""RayExecutor: every ensemble group of a sweep as one Ray task, on an existing or a local cluster.

>>> run_sweep("examples/sweep-tiny.yaml", "sweeps/tiny", executor=RayExecutor("auto"))  # doctest: +SKIP

Ray is optional (``pip install 'bnrank[ray]'``) and imported only when a RayExecutor connects.
The executor connects on first use: to ``address`` ('auto': the cluster this node belongs to,
started with ``ray start``; 'HOST:PORT': that cluster's head), or with ``address=None`` to the
cluster in ``RAY_ADDRESS`` if set, else a new local Ray instance on this machine. When Ray is
already initialized in the process, that connection is used as it is. The connection stays open
for the life of the process (``ray.shutdown()`` closes it).

Each group becomes one task running `bnrank.sweep.work.run_group` with the resources it declares:
`num_cpus` CPUs (the task's torch threads, unless `threads` is given) and `num_gpus` GPUs, where
a fraction packs several groups onto one GPU (0.25: four at a time). Ray makes the granted GPUs
the only ones the task sees, so ``device: cuda`` (or 'auto') uses them; a task granted no GPU
sees none, so 'auto' means CPU there. A worker that ran a GPU task exits after it (Ray's default
for GPU tasks), which returns its CUDA memory to the groups sharing the GPU.

Results travel back to the driver, which alone writes the sweep directory (bnrank.sweep.store),
exactly as with the local executor: a sweep can be started with one executor and resumed with
the other. Faults: a task whose worker process dies (killed, out of memory, its node lost) is
run again by Ray, up to `max_retries` times; its group is yielded once, whichever attempt
finished it, so every cell is written exactly once. An exception raised by `run_group` itself
is not retried (it would fail the same way) and propagates as the original exception; a task
lost for good (retries spent, its object or node lost) raises WorkerError. When the
driver dies, Ray stops the driver's tasks and the finished groups are in the store: rerunning
the sweep resumes it. On an error or Ctrl-C in the driver, the tasks still pending are cancelled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import ModuleType

import torch

from bnrank.errors import ConfigError, WorkerError
from bnrank.sweep.grouping import Group
from bnrank.sweep.spec import Cell
from bnrank.sweep.work import GroupResult, run_group

INSTALL_HINT = "pip install 'bnrank[ray]' (or: pip install ray)"

#: Ray leaves CUDA_VISIBLE_DEVICES alone for a task granted no GPU unless this is set; with it,
#: such a task sees no GPU and cannot use one that other tasks were granted.
_HIDE_UNGRANTED_GPUS = {"env_vars": {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}}


def _first_line(err: BaseException) -> str:
    """'TypeName: the first line of its message' (Ray's messages run over many lines)."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def import_ray() -> ModuleType:
    """The ray module, or ConfigError telling how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray executor needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def run_group_task(group: Group, threads: int) -> GroupResult:
    """What one Ray task runs: `run_group` with `threads` torch threads (Ray reuses its workers,
    so the count is set for every task)."""
    torch.set_num_threads(threads)
    return run_group(group)


class RayExecutor:
    """Run each group as a Ray task (see the module docstring).

    address: None, 'auto' or 'HOST:PORT' (as ``ray.init``). num_cpus, num_gpus: the resources
    each task declares (num_gpus may be a fraction ≤ 1, or a whole number). max_retries: how
    often Ray reruns a task whose worker died. threads: torch threads per task (default
    ``max(1, int(num_cpus))``). Bad values raise ConfigError.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_retries: int = 3,
        threads: int | None = None,
    ):
        if not num_cpus > 0:
            raise ConfigError(f"Ray num_cpus per task must be > 0, got {num_cpus}")
        if not num_gpus >= 0 or (num_gpus > 1 and num_gpus != int(num_gpus)):
            raise ConfigError(f"Ray num_gpus per task must be a fraction in [0, 1] or a whole number, got {num_gpus}")
        if max_retries < 0:
            raise ConfigError(f"Ray max_retries must be >= 0, got {max_retries}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.threads = threads or max(1, int(num_cpus))

    def connect(self) -> ModuleType:
        """Connect to the cluster unless Ray is initialized already; returns the ray module.
        An address with no cluster behind it raises ConfigError."""
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
                where = self.address or "RAY_ADDRESS"
                raise ConfigError(f"cannot connect to a Ray cluster at {where}: {_first_line(err)}") from None
        return ray

    def check(self, cells: Sequence[Cell]) -> None:
        """Raise ConfigError, before anything is written, when the cluster cannot run the cells:
        ``device: cuda`` without GPUs per task, or a task asking for more CPUs or GPUs than the
        whole cluster has (it would wait forever)."""
        ray = self.connect()
        if not self.num_gpus and any(c.config.device == "cuda" for c in cells):
            raise ConfigError(
                "device 'cuda' on Ray needs GPUs per task: set num_gpus (--ray-num-gpus 1, or 0.25 to pack 4 groups per GPU)"
            )
        total = ray.cluster_resources()
        for name, need in (("CPU", self.num_cpus), ("GPU", self.num_gpus)):
            if need > total.get(name, 0):
                raise ConfigError(f"each Ray task asks for {need:g} {name} but the cluster has {total.get(name, 0):g} in all")

    def map(self, groups: Sequence[Group]) -> Iterator[GroupResult]:
        """Submit every group, then yield their results in completion order."""
        ray = self.connect()
        options = dict(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries, retry_exceptions=False)
        if not self.num_gpus:
            options["runtime_env"] = _HIDE_UNGRANTED_GPUS
        task = ray.remote(**options)(run_group_task)
        pending = [task.remote(group, self.threads) for group in groups]
        try:
            while pending:
                [ready], pending = ray.wait(pending, num_returns=1)
                try:
                    result = ray.get(ready)
                except ray.exceptions.RayTaskError as err:  # run_group raised: re-raise its exception
                    raise err.cause from None
                except ray.exceptions.RayError as err:  # the task's worker, object or node is lost for good
                    raise WorkerError(f"a Ray task failed for good ({_first_line(err)})") from None
                yield result
        finally:
            for ref in pending:  # interrupted or failed: stop the groups still queued or running
                ray.cancel(ref, force=True)
