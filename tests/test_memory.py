"""The memory estimate: against the measured peak of small runs, sizes, and the refusal before
anything is allocated or written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnrank
from bnrank.config import RunConfig, validate
from bnrank.errors import ConfigError
from bnrank.memory import MemoryEstimate, check_memory, parse_size, train_estimate
from bnrank.models import EnsembleMLP

#: How far the estimate may lie from the measured growth of the peak resident memory.
FACTOR = 1.6

MEASURE = """
import json, sys
import numpy as np, torch
import bnrank
from bnrank.config import RunConfig, validate
from bnrank.memory import analyze_estimate, train_estimate
from bnrank.models import EnsembleMLP
torch.set_num_threads(1)
def peak():  # this process's peak resident memory (VmHWM; ru_maxrss would carry the parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
kind, spec = sys.argv[1], json.loads(sys.argv[2])
warm = {"members": 1, "task": {"n_train": 8, "n_test": 0, "d_in": 3, "d_out": 2, "hidden": 4, "latent_dim": 2, "rank": 1},
        "model": {"depth": 2, "width": 4}, "train": {"log_every": 1, "phases": [{"steps": 2}]}}
bnrank.train(warm, progress=False)  # load torch's kernels and allocator pools before the baseline
if kind == "train":
    cfg = validate(RunConfig, spec)
    before = peak()
    bnrank.train(cfg, progress=False)
    estimate = train_estimate(cfg).total
else:
    E, dims, n, curvature = spec
    model = EnsembleMLP.init(E, dims, seeds=list(range(E)))
    x, y = np.random.randn(n, dims[0]), np.random.randn(n, dims[-1])
    before = peak()
    bnrank.analyze(model, x, Y=y, curvature=curvature)
    estimate = analyze_estimate(E, dims, n, curvature).total
print(json.dumps({"measured": peak() - before, "estimate": estimate}))
"""

RUNS = {
    "adam-float32": ("train", {"members": 4, "task": {"n_train": 3000, "n_test": 500}, "model": {"depth": 6, "width": 256},
                               "train": {"log_every": 1, "phases": [{"steps": 3}]}}),
    "sgd-float64": ("train", {"members": 2, "dtype": "float64", "task": {"n_train": 1500, "n_test": 0, "d_in": 50},
                              "model": {"depth": 4, "width": 800},
                              "train": {"log_every": 1, "phases": [{"steps": 3, "optimizer": "sgd", "batch_size": 500, "momentum": 0.9}]}}),
    "analyze": ("analyze", [4, [20, 100, 100, 100, 100, 20], 500, False]),
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", RUNS)
def test_the_estimate_is_within_a_factor_of_the_measured_peak(name):
    kind, spec = RUNS[name]
    out = subprocess.run([sys.executable, "-c", MEASURE, kind, json.dumps(spec)], capture_output=True, text=True,
                         timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["measured"] > 50e6  # well above the allocator's noise
    assert 1 / FACTOR <= got["estimate"] / got["measured"] <= FACTOR, got


def test_parts_follow_the_sizes():
    cfg = validate(RunConfig, {"members": 2, "dtype": "float64", "task": {"n_train": 100, "n_test": 0, "d_in": 3, "d_out": 2},
                               "model": {"depth": 2, "width": 10}, "train": {"phases": [{"optimizer": "adam"}]}})
    parts = train_estimate(cfg).parts
    params = 3 * 10 + 10 + 10 * 2 + 2  # dims 3 → 10 → 2, weights and biases
    assert parts["parameters"] == 2 * params * 8 * (4 + 3)
    assert parts["activations"] == 2 * 100 * (10 + 2 + 10) * 8  # no test set, no minibatch
    assert parts["data"] == 100 * 5 * 8 + 100 * 5 * 8
    assert train_estimate(cfg, members=4).parts["parameters"] == 2 * parts["parameters"]


def test_transient_parts_count_once():
    e = MemoryEstimate({"a": 10, "b": 7, "c": 5}, transient={"b", "c"})
    assert e.total == 17 and e.times(3).total == 51


@pytest.mark.parametrize("text, size", [("8G", 8 * 10**9), ("512MB", 512 * 10**6), ("2GiB", 2 * 2**30), ("1e9", 10**9),
                                        ("1.5 kb", 1500), ("100", 100)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "8X"])
def test_bad_sizes(text):
    with pytest.raises(ConfigError, match="expected a size"):
        parse_size(text)


def test_too_large_is_refused_with_the_estimate():
    e = MemoryEstimate({"activations": 3 * 10**9, "parameters": 10**9})
    with pytest.raises(ConfigError, match=r"^training x needs about 4 GB \(activations 3 GB, parameters 1 GB\) but "
                                          r"--max-memory allows 2 GB"):
        check_memory(e, "training x", max_memory=2 * 10**9)
    check_memory(e, "training x", max_memory=5 * 10**9)


def test_a_run_too_large_for_the_machine_is_refused_before_anything_is_allocated(tmp_path):
    """10^12 parameters per member: refused at once (no allocation could be this fast), nothing written."""
    cfg = {"task": {"n_train": 10, "n_test": 0}, "model": {"depth": 3, "width": 10**6}}
    with pytest.raises(ConfigError, match=r"training .* needs about .* TB .* but this machine has available"):
        bnrank.train(cfg, out=tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_analyze_refuses_what_max_memory_does_not_allow():
    model = EnsembleMLP.init(2, [3, 8, 2], seeds=[0, 1])
    with pytest.raises(ConfigError, match="analyze needs about"):
        bnrank.analyze(model, np.zeros((50, 3)), max_memory=1000)
