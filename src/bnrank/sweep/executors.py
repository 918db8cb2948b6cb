"""Executors run groups and yield their results as they finish; the caller writes the store.

An executor is any object with ``map(groups) -> Iterator[GroupResult]`` that runs the pure
function `bnrank.sweep.work.run_group` on each group, in any order. Results travel back to the
caller, which alone writes the sweep directory, so workers never touch the store and a worker
left running after its parent died cannot write a stale part. An executor may also have
``check(cells)``, which `run_sweep` calls before it writes anything: it raises ConfigError for
cells the executor cannot run where it runs them (here: ``device: cuda`` without a GPU).
`bnrank.sweep.ray_executor.RayExecutor` runs the groups as tasks on a Ray cluster.

`LocalExecutor(workers=1)` runs the groups in this process with torch's current thread count.
`LocalExecutor(workers=N)` runs them in a pool of N processes, each with ``max(1, cores // N)``
torch threads, so the processes share the machine's cores rather than oversubscribe them.
The pool takes the groups longest first (`Group.work`), so its workers finish close together.
`threads` overrides the count in either case (in-process, torch's setting is restored after):
small networks often run fastest on one thread, and on a machine whose cores are already busy
more threads than free cores can be many times slower. The
processes come from a forkserver that has imported bnrank once (spawn where there is none): never
a fork of a parent whose torch thread pools are running, and only one torch import per pool
rather than one per worker. As with any non-fork pool, a script that calls it must guard its
entry point with ``if __name__ == "__main__":``. Workers ignore SIGINT: on Ctrl-C the parent
stops waiting, terminates them and lets the interrupt propagate (groups in flight are lost);
a worker that dies (killed, out of memory) raises WorkerError.
A parent killed outright (SIGKILL) cannot terminate them, so each worker checks every
`PARENT_CHECK_S` seconds that the process that started the pool is alive and exits when it is
not, rather than train its group to the end for nobody.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from bnrank.errors import WorkerError
from bnrank.runs import resolve_device
from bnrank.sweep.grouping import Group
from bnrank.sweep.spec import Cell
from bnrank.sweep.work import GroupResult, run_group


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


PARENT_CHECK_S = 1.0


def _init_worker(threads: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_without, args=(parent,), daemon=True, name="bnrank-parent-check").start()


def _exit_without(parent: int) -> None:
    """Exit this worker process as soon as process `parent` no longer exists."""
    while True:
        time.sleep(PARENT_CHECK_S)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)


class LocalExecutor:
    """Run groups in this process (`workers` = 1) or a pool of `workers` local processes."""

    def __init__(self, workers: int = 1, threads: int | None = None):
        if workers < 1 or (threads is not None and threads < 1):
            raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
        self.workers = workers
        self.threads = threads

    def check(self, cells: Sequence[Cell]) -> None:
        """Resolve every device the cells name on this machine: ConfigError for cuda without a GPU."""
        for device in sorted({c.config.device for c in cells}):
            resolve_device(device)

    def map(self, groups: Sequence[Group]) -> Iterator[GroupResult]:
        """Yield one GroupResult per group, in completion order."""
        workers = min(self.workers, len(groups))
        if workers <= 1:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads or previous)
            try:
                for group in groups:
                    yield run_group(group)
            finally:
                torch.set_num_threads(previous)
            return
        threads = self.threads or max(1, available_cores() // workers)
        pool = ProcessPoolExecutor(
            workers, mp_context=_context(), initializer=_init_worker, initargs=(threads, os.getpid())
        )
        finished = False
        try:
            # longest first: the pool's last groups are then short and the workers finish together
            pending = {pool.submit(run_group, g) for g in sorted(groups, key=Group.work, reverse=True)}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise WorkerError("a sweep worker process died (killed, or out of memory)") from None
                    yield result
            finished = True
        finally:
            if not finished:  # interrupted or failed: do not wait for the groups in flight
                for process in list((pool._processes or {}).values()):  # no public API before 3.14
                    process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
