"""Fault injection: every bad input gives exit code 2, one `error:` line, no traceback and nothing
written; a sweep driver killed with SIGKILL at random points resumes to the uninterrupted result;
a disk that fills up leaves no partial run directory."""

import copy
import errno
import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_config
from typer.testing import CliRunner

import bnrank
from bnrank.checkpoint import save_checkpoint
from bnrank.cli import app
from bnrank.sweep import run_sweep
from bnrank.sweep.store import SweepStore

NO_GPU = not torch.cuda.is_available()


def sweep_spec(**fields) -> dict:
    base = tiny_config()
    del base["members"]
    return {"name": "f", "base": base, "grid": {"model.depth": [2, 3]}, "analyze": False} | fields


def config(changes: dict | None = None, drop: tuple = ()) -> str:
    """tiny_config as YAML with dotted keys set (`changes`) or removed (`drop`)."""
    cfg = copy.deepcopy(tiny_config())
    for key, value in (changes or {}).items():
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[parts[-1]] = value
    for key in drop:
        cfg.pop(key)
    return yaml.safe_dump(cfg)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs the cases read (never written by them): configs, a run, checkpoints, arrays, a sweep."""
    w = tmp_path_factory.mktemp("world")
    (w / "good.yaml").write_text(config())
    (w / "spec.yaml").write_text(yaml.safe_dump(sweep_spec()))
    (w / "garbage.bin").write_bytes(random.Random(0).randbytes(300))
    (w / "a_file").write_text("x")
    run = bnrank.train(tiny_config(), out=w / "run", progress=False)
    bnrank.train(tiny_config(members=1, model={"kind": "leaky-resnet", "depth": 2, "width": 8}), out=w / "leaky-run", progress=False)
    bad = run.model.select([0, 1])
    for t in (*bad.weights, *bad.biases):
        t.data.fill_(float("nan"))
    save_checkpoint(bad, w / "nan.safetensors")
    (w / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    (w / "incomplete").mkdir()
    (w / "incomplete" / "config.yaml").write_text(config())
    np.save(w / "x.npy", np.zeros((4, 5)))
    np.save(w / "x_wide.npy", np.zeros((4, 2)))
    np.save(w / "x_3d.npy", np.zeros((2, 4, 5)))
    np.save(w / "x_complex.npy", np.zeros((4, 5)) + 1j)
    np.save(w / "x_nan.npy", np.full((4, 5), np.nan))
    np.save(w / "x_str.npy", np.array([["a"] * 5] * 4))
    np.save(w / "x_obj.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    np.savez(w / "x.npz", a=np.zeros((4, 5)))
    run_sweep(sweep_spec(), w / "sweep", progress=False)
    return w


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


CASES = [
    # train: the config file
    ("binary-config", ["train", "{w}/garbage.bin"], "not a text file"),
    ("bad-yaml", ["train", "{t}/c.yaml"], "not valid YAML", {"c.yaml": "model: {depth: [1,\n"}),
    ("list-config", ["train", "{t}/c.yaml"], "expected a mapping", {"c.yaml": "- 1\n- 2\n"}),
    ("unknown-key", ["train", "{t}/c.yaml"], "model.widht: unknown key", {"c.yaml": config({"model.widht": 3})}),
    ("unknown-model-kind", ["train", "{t}/c.yaml"], "model: kind must be 'mlp'", {"c.yaml": config({"model.kind": "cnn"})}),
    ("rebalance-leaky", ["train", "{t}/c.yaml"], "train.rebalance_every needs a homogeneous model, not leaky-resnet (L̃ = 1) (model.kind 'leaky-resnet')",
     {"c.yaml": config({"model.kind": "leaky-resnet", "train.rebalance_every": 10})}),
    ("adaptive-steps-mlp", ["train", "{t}/c.yaml"], "train.adaptive_steps needs a layer steps model, not mlp (relu) (model.kind 'mlp')",
     {"c.yaml": config({"train.adaptive_steps": {"every": 10}})}),
    ("curvature-leaky", ["analyze", "{w}/leaky-run", "--curvature"], "needs a layered product model, not leaky-resnet (L̃ = 1) (model.kind 'leaky-resnet')"),
    ("bad-activation", ["train", "{t}/c.yaml"], "model.activation: Input should be 'relu' or 'linear'", {"c.yaml": config({"model.activation": "tanh"})}),
    ("depth-true", ["train", "{t}/c.yaml"], "model.depth: Input should be a valid integer, got true", {"c.yaml": config({"model.depth": True})}),
    ("width-float", ["train", "{t}/c.yaml"], "model.width: Input should be a valid integer, got 8.0", {"c.yaml": config({"model.width": 8.0})}),
    ("width-string", ["train", "{t}/c.yaml"], "got '8'", {"c.yaml": config({"model.width": "8"})}),
    ("members-true", ["train", "{t}/c.yaml"], "members: Input should be a valid integer, got true", {"c.yaml": config({"members": True})}),
    ("lam-true", ["train", "{t}/c.yaml"], "train.lam: Input should be a valid number, got true", {"c.yaml": config({"train.lam": True})}),
    ("lam-negative", ["train", "{t}/c.yaml"], "train.lam", {"c.yaml": config({"train.lam": -0.5})}),
    ("lam-list-length", ["train", "{t}/c.yaml"], "train.lam has 3 values but members = 2", {"c.yaml": config({"train.lam": [0.1, 0.1, 0.1]})}),
    ("batch-over-n", ["train", "{t}/c.yaml"], "train.phases.0.batch_size = 64 exceeds task.n_train = 32",
     {"c.yaml": config({"train.phases": [{"optimizer": "sgd", "batch_size": 64, "steps": 2}]})}),
    ("gd-with-batch", ["train", "{t}/c.yaml"], "optimizer 'gd' is full batch",
     {"c.yaml": config({"train.phases": [{"optimizer": "gd", "batch_size": 8}]})}),
    ("no-phases", ["train", "{t}/c.yaml"], "train.phases", {"c.yaml": config({"train.phases": []})}),
    ("task-kind", ["train", "{t}/c.yaml"], "kind must be", {"c.yaml": config({"task": {"kind": "mnist"}})}),
    ("rank-over-latent", ["train", "{t}/c.yaml"], "rank (5) must be <= latent_dim (4)", {"c.yaml": config({"task.rank": 5})}),
    ("zero-axis", ["train", "{t}/c.yaml"], "axis must be a finite non-zero vector", {"c.yaml": config({"task": {"kind": "symmetry", "axis": [0, 0, 0]}})}),
    ("gp-too-large", ["train", "{t}/c.yaml"], "exceeds 20000", {"c.yaml": config({"task": {"kind": "matern-composition", "n_train": 30000}})}),
    ("config-missing", ["train", "{t}/nope.yaml"], "cannot read config"),
    ("config-is-dir", ["train", "{w}"], "cannot read config"),
    # train: options and the output
    ("set-no-equals", ["train", "{w}/good.yaml", "--set", "nokeyvalue"], "expected key=value"),
    ("set-bad-yaml", ["train", "{w}/good.yaml", "--set", "train.lam=[1,"], "value is not valid YAML"),
    ("set-not-a-section", ["train", "{w}/good.yaml", "--set", "seed.x=1"], "'seed' is not a section"),
    ("set-depth-true", ["train", "{w}/good.yaml", "--set", "model.depth=true"], "got true"),
    ("out-exists", ["train", "{w}/good.yaml", "--out", "{w}/run"], "already exists"),
    ("out-under-file", ["train", "{w}/good.yaml", "--out", "{w}/a_file/run"], "is not a directory"),
    ("out-read-only", ["train", "{w}/good.yaml"], "error: cannot write runs/good: Read-only file system", None, "read-only"),
    ("huge-width", ["train", "{t}/c.yaml"], "needs about", {"c.yaml": config({"model.width": 10**6})}),
    ("huge-n", ["train", "{t}/c.yaml"], "needs about", {"c.yaml": config({"task.n_train": 10**10})}),
    ("max-memory", ["train", "{w}/good.yaml", "--max-memory", "1K"], "but --max-memory allows 1 KB"),
    ("max-memory-bad", ["train", "{w}/good.yaml", "--max-memory", "lots"], "expected a size"),
    pytest.param(("cuda-without-gpu", ["train", "{w}/good.yaml", "--device", "cuda"], "torch sees no CUDA device"),
                 marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is present")),
    ("device-gpu", ["train", "{w}/good.yaml", "--device", "gpu"], "Invalid value for '--device'"),
    ("dtype-half", ["train", "{w}/good.yaml", "--dtype", "float16"], "Invalid value for '--dtype'"),
    ("unknown-option", ["train", "{w}/good.yaml", "--bogus"], "No such option: --bogus"),
    ("no-config-no-data", ["train"], "pass a run config, or a data file with --data"),
    ("missing-argument", ["analyze"], "Missing argument"),
    ("unknown-command", ["trian"], "No such command 'trian'"),
    # analyze
    ("analyze-nowhere", ["analyze", "{t}/nowhere"], "no run directory or checkpoint"),
    ("analyze-ckpt-alone", ["analyze", "{w}/run/checkpoint.safetensors"], "pass its inputs with --data"),
    ("analyze-data-and-task", ["analyze", "{w}/run", "--data", "{w}/x.npy", "--task", "{w}/good.yaml"], "at most one of --data and --task"),
    ("data-wrong-width", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/x_wide.npy"], "X must have shape (N, 5)"),
    ("data-3d", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/x_3d.npy"], "expected a 2-d array (N, columns)"),
    ("data-complex", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/x_complex.npy"], "holds complex numbers"),
    ("data-nan", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/x_nan.npy"], "contains NaN or inf"),
    ("data-strings", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/x_str.npy"], "is not numeric"),
    ("data-pickle", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/x_obj.npy"], "not a valid .npy file"),
    ("data-npz", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/x.npz"], "no array 'x'"),
    ("data-missing", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{t}/none.npy"], "no such file"),
    ("data-garbage", ["analyze", "{w}/run/checkpoint.safetensors", "--data", "{w}/garbage.bin"], "unknown data format"),
    ("ckpt-all-nan", ["analyze", "{w}/nan.safetensors", "--data", "{w}/x.npy"], "every member (2) has NaN or inf parameters"),
    ("ckpt-corrupt", ["analyze", "{w}/corrupt.safetensors", "--data", "{w}/x.npy"], "not a readable safetensors file"),
    ("run-incomplete", ["analyze", "{w}/incomplete"], "not a complete run directory"),
    ("analyze-task-bad", ["analyze", "{w}/run/checkpoint.safetensors", "--task", "{w}/garbage.bin"], "not a text file"),
    ("analyze-threshold", ["analyze", "{w}/run", "--threshold", "-1"], "Invalid value for '--threshold'"),
    ("analyze-max-memory", ["analyze", "{w}/run", "--max-memory", "1K"], "analyze needs about"),
    ("analyze-read-only", ["analyze", "{w}/run"], "Read-only file system", None, "read-only"),
    # sweep
    ("spec-binary", ["sweep", "{w}/garbage.bin"], "not a text file"),
    ("spec-grid-key", ["sweep", "{t}/s.yaml"], "grid key 'model.widht'", {"s.yaml": "grid: {model.widht: [3]}\n"}),
    ("spec-trials-0", ["sweep", "{t}/s.yaml"], "trials", {"s.yaml": "trials: 0\n"}),
    ("spec-seed-repeats", ["sweep", "{t}/s.yaml"], "seeds must be a non-empty list without repeats", {"s.yaml": "seeds: [1, 1]\n"}),
    ("spec-analyze-yes", ["sweep", "{t}/s.yaml"], "analyze: Input should be a valid boolean, got 'yes'", {"s.yaml": "analyze: 'yes'\n"}),
    ("spec-base-members", ["sweep", "{t}/s.yaml"], "base.members: a cell is one network", {"s.yaml": "base: {members: 2}\n"}),
    ("spec-grid-depth-true", ["sweep", "{t}/s.yaml"], "got true", {"s.yaml": "grid: {model.depth: [true]}\n"}),
    ("spec-grid-value", ["sweep", "{w}/spec.yaml", "--set", "grid.train.lam=[-1]"], "grid train.lam=-1"),
    ("sweep-out-file", ["sweep", "{w}/spec.yaml", "--out", "{w}/a_file"], "is a file, not a sweep directory"),
    ("sweep-out-foreign", ["sweep", "{w}/spec.yaml", "--out", "{w}/incomplete"], "not empty and not a sweep directory"),
    ("sweep-other-spec", ["sweep", "{w}/spec.yaml", "--out", "{w}/sweep", "--set", "train.lam=0.5"],
     "holds a different sweep (spec differs at base.train.lam: 0.01 here, 0.5 in the new spec)"),
    ("sweep-locked", ["sweep", "{w}/spec.yaml", "--out", "{w}/sweep"], "being written by another sweep driver", None, "locked"),
    ("sweep-read-only", ["sweep", "{w}/spec.yaml"], "Read-only file system", None, "read-only"),
    ("sweep-address-local", ["sweep", "{w}/spec.yaml", "--address", "auto"], "--address is for --executor ray"),
    ("sweep-ray-workers", ["sweep", "{w}/spec.yaml", "--executor", "ray", "--workers", "2"], "--workers is for --executor local"),
    ("sweep-workers-0", ["sweep", "{w}/spec.yaml", "--workers", "0"], "Invalid value for '--workers'"),
    ("sweep-max-memory", ["sweep", "{w}/spec.yaml", "--max-memory", "1K"], "sweep f needs about"),
    # reproduce
    ("reproduce-unknown", ["reproduce", "fig9"], "unknown experiment 'fig9'"),
    ("reproduce-preset", ["reproduce", "fig1", "--preset", "nope"], "unknown preset 'nope'"),
    ("reproduce-ray-gpus", ["reproduce", "fig1", "--ray-num-gpus", "1"], "--ray-num-gpus is for --executor ray"),
    ("reproduce-ray-workers", ["reproduce", "fig1", "--executor", "ray", "--workers", "2"], "--workers is for --executor local"),
    ("reproduce-out-file", ["reproduce", "fig1", "--out", "{w}/a_file/x"], "is not a directory"),
    ("reproduce-read-only", ["reproduce", "fig1"], "Read-only file system", None, "read-only"),
    ("reproduce-executor", ["reproduce", "fig1", "--executor", "slurm"], "Invalid value for '--executor'"),
]


def _name(case) -> str:
    return (case.values[0] if hasattr(case, "values") else case)[0]


def test_the_table_covers_at_least_40_kinds_of_bad_input():
    assert len(CASES) >= 40 and len({_name(c) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[_name(c) for c in CASES])
def test_bad_input_is_one_line_exit_code_2_and_nothing_written(case, world, tmp_path, monkeypatch):
    name, argv, message, files, fault = (*case, None, None)[:5]
    for fname, text in (files or {}).items():
        (tmp_path / fname).write_text(text)
    monkeypatch.chdir(tmp_path)  # default outputs (runs/, sweeps/, out/) land here
    if fault == "read-only":
        monkeypatch.setattr("bnrank.atomic.refusal", lambda directory: errno.EROFS)
    fill = {"w": world, "t": tmp_path}
    args = [a.format(**fill) for a in argv]
    message = message.format(**fill)
    before, inputs = tree(tmp_path), tree(world)
    lock = None
    if fault == "locked":
        lock = open(world / "sweep" / ".lock", "a+")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        res = CliRunner().invoke(app, args)
    finally:
        if lock is not None:
            lock.close()
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.stderr, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert tree(tmp_path) == before and tree(world) == inputs


# -- faults while writing ---------------------------------------------------------------------------


def test_a_full_disk_while_saving_a_run_leaves_no_partial_directory(tmp_path, monkeypatch):
    """The third file of the run directory hits ENOSPC: one line naming the run and the OS error,
    and the directory (staged beside it) is gone."""
    import bnrank.checkpoint

    real = Path.write_bytes

    def full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bnrank.checkpoint.Path, "write_bytes", full)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config())
    res = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run"), "-q"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.stderr
    assert lines[0] == f"error: cannot write {tmp_path / 'run'}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no run, no staging left


def test_a_full_disk_in_a_sweep_keeps_the_finished_parts_and_writes_no_partial_one(tmp_path, monkeypatch):
    import bnrank.sweep.store

    real, calls = bnrank.sweep.store.save_checkpoint, []

    def second_fails(model, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(model, path)

    monkeypatch.setattr(bnrank.sweep.store, "save_checkpoint", second_fails)
    out = tmp_path / "sw"
    with pytest.raises(bnrank.StoreError, match=r"cannot write .*parts/.*: No space left on device"):
        run_sweep(sweep_spec(max_members=1), out, progress=False)
    parts = list((out / "parts").iterdir())
    assert len(parts) == 1 and not parts[0].name.startswith(".")  # the finished part, no staging
    monkeypatch.setattr(bnrank.sweep.store, "save_checkpoint", real)
    assert len(run_sweep(sweep_spec(max_members=1), out, progress=False).runs) == 2


def test_an_analysis_that_cannot_be_written_leaves_no_file(world, tmp_path, monkeypatch):
    import matplotlib.figure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    res = CliRunner().invoke(app, ["analyze", str(world / "run"), "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: cannot write {tmp_path / 'a'}: No space left on device"
    assert list(tmp_path.iterdir()) == []


# -- a sweep driver killed at random points -----------------------------------------------------------

KILL_SPEC_STEPS = 200
DRIVER = """
import sys, yaml
from bnrank.sweep import run_sweep
run_sweep(yaml.safe_load(open(sys.argv[1])), sys.argv[2], progress=False, threads=1)
"""


def _holds_lock(out: Path, pid: int) -> bool:
    """Whether process `pid` has taken the sweep directory's lock (its record names it)."""
    try:
        return f'"pid": {pid},' in (out / ".lock").read_text()
    except OSError:
        return False


def _numbers(runs: pd.DataFrame) -> pd.DataFrame:
    keep = ["cell_id", "objective", "mse", "test_mse", "param_norm_sq", "grad_norm", "balance_error", "mid_rank", "diverged"]
    return runs[keep].sort_values("cell_id", ignore_index=True)


def test_a_sweep_driver_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL at 5 seeded random points, each followed by a restart: a point is a number of
    finished parts (0 to 7 of 8, rising) plus a random delay of up to 0.3 s (a group takes about
    0.25 s, so some kills land mid-group or mid-write). The last run finishes. The result: every
    cell exactly once, with the numbers of one uninterrupted in-process run."""
    base = sweep_spec()["base"]
    base["train"]["phases"][0]["steps"] = KILL_SPEC_STEPS
    spec = sweep_spec(base=base, grid={"model.depth": [2, 3], "train.lam": [0.01, 0.001]}, trials=2, max_members=1)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sw"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(20)
    points = sorted(rng.sample(range(8), 5))
    finished = []
    for target in points:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(spec_path), str(out)], env=env)
        started = time.monotonic()
        while not _holds_lock(out, proc.pid) and proc.poll() is None:  # importing torch, expanding the spec
            time.sleep(0.005)
        while len(SweepStore(out).part_ids()) < target and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert time.monotonic() - started < 60
        finished.append(len(SweepStore(out).part_ids()))
    assert finished[0] < 8 and len(set(finished)) > 1, finished  # the kills fell inside the sweep
    result = run_sweep(spec_path, out, progress=False, threads=1)
    assert len(result.runs) == 8 and result.runs.cell_id.is_unique
    assert set(result.runs.cell_id) == {c.cell_id for c in result.cells}
    assert sorted(p.name for p in (out / "parts").iterdir()) == sorted(set(result.runs.group_id))
    reference = run_sweep(spec, tmp_path / "ref", progress=False, threads=1)
    pd.testing.assert_frame_equal(_numbers(result.runs), _numbers(reference.runs))


def test_a_dead_drivers_lock_is_taken_over(tmp_path):
    """A driver killed outright leaves its record in .lock; the next driver takes the lock."""
    out = tmp_path / "sw"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(f'{{"pid": {int(dead.stdout)}, "host": "{os.uname().nodename}"}}\n')
    assert len(run_sweep(sweep_spec(), out, progress=False).runs) == 2
    assert SweepStore(out).part_ids()


@pytest.mark.parametrize("alive, refused", [(False, False), (True, True)])
def test_without_flock_the_lock_record_decides(tmp_path, monkeypatch, alive, refused):
    """On a file system without flock, a record naming a live process on this host refuses the
    directory and one naming a dead process is stale and taken over."""
    import bnrank.sweep.store

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(bnrank.sweep.store.fcntl, "flock", no_flock)
    out = tmp_path / "sw"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) if alive else None
    try:
        pid = other.pid if alive else int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                                         capture_output=True, text=True).stdout)
        (out / ".lock").write_text(f'{{"pid": {pid}, "host": "{os.uname().nodename}", "started": "then"}}\n')
        if refused:
            with pytest.raises(bnrank.StoreError, match=rf"being written by another sweep driver \(pid {pid} on host"):
                run_sweep(sweep_spec(), out, progress=False)
            assert not (out / "spec.yaml").exists()
        else:
            assert len(run_sweep(sweep_spec(), out, progress=False).runs) == 2
            assert (out / ".lock").read_text() == ""  # released on the way out
    finally:
        if other is not None:
            other.kill()
            other.wait()
