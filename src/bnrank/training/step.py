"""A training step run eagerly, or on a GPU captured once as a CUDA graph and replayed.

On a GPU a step of a small network is bound by launching its kernels from Python (about ten
per layer, each a few microseconds of work; bench/README.md), not by arithmetic. A CUDA graph
records the step's kernels once and replays them all with one launch. That needs a step whose
kernels read and write the same memory on every call and never wait for the host. The
trainer's step is written so: it reads its per-step values (λ, the optimizer's scalars, the
step number, a minibatch) from buffers the trainer refills in place before each call (the
``prepare``/``apply`` split of `bnrank.training.optim`), keeps its activations in a `Workspace`
and writes its results in place. Set the environment variable ``BNRANK_CUDA_GRAPHS=0`` to run
every step eagerly on a GPU too (the same kernels, so the same numbers, only slower).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

WARMUP = 3
"""Eager calls before the capture. They create the buffers, cuBLAS handles and workspaces the
step uses, on the stream the capture then runs on; they are real steps of training."""


class GraphedStep:
    """Calls `step` (no arguments, device work only, nothing returned) eagerly; where `device`
    is a CUDA device and `enabled`, the call after `WARMUP` eager ones captures it as a CUDA
    graph and every call from then on replays the graph (the same kernels on the same memory).
    `enabled` defaults to the environment: off where BNRANK_CUDA_GRAPHS is "0"."""

    def __init__(self, step: Callable[[], None], device: torch.device, enabled: bool | None = None):
        if enabled is None:
            enabled = os.environ.get("BNRANK_CUDA_GRAPHS", "1") != "0"
        self.step = step
        self.stream = torch.cuda.Stream(device) if enabled and device.type == "cuda" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return
        if self.stream is None:
            self.step()
            return
        self.stream.wait_stream(torch.cuda.current_stream())  # the buffers refilled before this call
        with torch.cuda.stream(self.stream):
            if self.calls <= WARMUP:
                self.step()
            else:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self.step()
                self.graph = graph
        torch.cuda.current_stream().wait_stream(self.stream)
        if self.graph is not None:  # capturing ran nothing: this call's step is the first replay
            self.graph.replay()
