"""RayExecutor on a real local Ray cluster: same results as the local executor, killed workers are
retried, a killed driver resumes, executors can be switched mid-sweep; errors without Ray."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnrank.errors import ConfigError, WorkerError
from bnrank.sweep import LocalExecutor, RayExecutor, expand, group_cells, load_spec, load_sweep, run_sweep
from bnrank.sweep.store import SweepStore
from conftest import cli, one_line_error, tiny_config

TIMING = ["train_time_s", "wall_time_s"]
TASK_TITLE = "ray::run_group_task"  # Ray names a worker process after the task it is running


def spec(steps: int = 30, **fields) -> dict:
    """8 tiny cells in 4 groups of 2 (2 depths × 2 λ × 2 seeds)."""
    base = tiny_config()
    del base["members"]
    base["train"]["phases"][0]["steps"] = steps
    return {"name": "r", "base": base, "grid": {"model.depth": [2, 3], "train.lam": [0.01, 0.001]}, "trials": 2,
            "max_members": 2, "analyze": True, "analyze_points": 4, "analyze_curvature": False} | fields


#: Long enough (a few tenths of a second per group) for a worker to be caught and killed mid-task.
SLOW = spec(steps=1000)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs, on the loopback address) for the module; its GCS address."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'bnrank[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    yield f"127.0.0.1:{port}"
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The SLOW sweep with the local executor (one thread, in-process)."""
    return run_sweep(SLOW, tmp_path_factory.mktemp("local") / "sw", threads=1, progress=False)


def same_results(result, reference) -> None:
    """Every cell exactly once, and the tables equal the reference's (timings aside)."""
    assert result.complete and result.runs.cell_id.is_unique
    assert list(result.runs.cell_id) == list(reference.runs.cell_id)
    pd.testing.assert_frame_equal(result.runs.drop(columns=TIMING), reference.runs.drop(columns=TIMING))
    for name in ("metrics", "layers", "network"):
        pd.testing.assert_frame_equal(getattr(result, name), getattr(reference, name))


def task_pids() -> list[int]:
    """PIDs of this machine's Ray workers now running a sweep group."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(TASK_TITLE.encode()):
                pids.append(int(entry.name))
        except OSError:  # the process ended meanwhile
            pass
    return pids


class Killer(threading.Thread):
    """SIGKILLs the first Ray worker seen running a group (within `timeout` seconds)."""

    def __init__(self, timeout: float = 60):
        super().__init__(daemon=True)
        self.timeout = timeout
        self.killed: int | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self.killed is None and time.monotonic() < deadline:
            for pid in task_pids():
                os.kill(pid, signal.SIGKILL)
                self.killed = pid
                break
            time.sleep(0.005)


@pytest.mark.ray
def test_ray_sweep_equals_the_local_one(cluster, reference, tmp_path):
    result = run_sweep(SLOW, tmp_path / "sw", executor=RayExecutor(num_cpus=1), progress=False)
    same_results(result, reference)
    assert (result.runs.threads == 1).all()  # torch threads = the task's CPUs


@pytest.mark.ray
def test_a_killed_worker_is_retried_and_every_cell_is_written_once(cluster, reference, tmp_path):
    killer = Killer()
    killer.start()
    result = run_sweep(SLOW, tmp_path / "sw", executor=RayExecutor(max_retries=2), progress=False)
    killer.join()
    assert killer.killed is not None, "no worker was seen running a group"
    same_results(result, reference)
    assert len(SweepStore(tmp_path / "sw").part_ids()) == 4


@pytest.mark.ray
def test_without_retries_a_killed_worker_fails_the_sweep_and_the_local_executor_resumes_it(cluster, reference, tmp_path):
    killer = Killer()
    killer.start()
    with pytest.raises(WorkerError, match=r"a Ray task failed for good \(.*\); the finished groups are kept in .*: rerun to resume"):
        run_sweep(SLOW, tmp_path / "sw", executor=RayExecutor(max_retries=0), progress=False)
    killer.join()
    done = SweepStore(tmp_path / "sw").part_ids()
    assert len(done) < 4  # the killed group is missing; finished ones were kept
    before = {p: (tmp_path / "sw" / "parts" / p / "runs.parquet").read_bytes() for p in done}
    result = run_sweep(SLOW, tmp_path / "sw", executor=LocalExecutor(threads=1), progress=False)
    same_results(result, reference)
    assert {p: (tmp_path / "sw" / "parts" / p / "runs.parquet").read_bytes() for p in done} == before


@pytest.mark.ray
def test_cli_driver_killed_on_an_existing_cluster_resumes(cluster, reference, tmp_path):
    path, out = tmp_path / "s.yaml", tmp_path / "sw"
    path.write_text(yaml.safe_dump(SLOW))
    command = [sys.executable, "-m", "bnrank.cli", "sweep", str(path), "--out", str(out), "--executor", "ray",
               "--address", cluster, "-q"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not SweepStore(out).part_ids():
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.monotonic() < deadline, "the driver wrote no group in time"
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert len(SweepStore(out).part_ids()) < 4
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "8/8 cells" in rerun.stdout
    same_results(load_sweep(out), reference)


@pytest.mark.ray
def test_check_refuses_what_the_cluster_cannot_run_before_writing(cluster, tmp_path):
    cuda = spec(base=spec()["base"] | {"device": "cuda"})
    with pytest.raises(ConfigError, match="device 'cuda' on Ray needs GPUs per task"):
        run_sweep(cuda, tmp_path / "a", executor=RayExecutor(), progress=False)
    with pytest.raises(ConfigError, match="asks for 1 GPU but the cluster has 0"):
        run_sweep(cuda, tmp_path / "b", executor=RayExecutor(num_gpus=1), progress=False)
    with pytest.raises(ConfigError, match="asks for 3 CPU but the cluster has 2"):
        run_sweep(spec(), tmp_path / "c", executor=RayExecutor(num_cpus=3), progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.ray
def test_an_error_raised_in_a_group_propagates_as_itself(cluster):
    """A task granted no GPU sees none (even on a GPU machine), so device 'cuda' fails in run_group."""
    groups = group_cells(expand(load_spec(spec(base=spec()["base"] | {"device": "cuda"}, grid={}))), max_members=2)
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        list(RayExecutor().map(groups))


@pytest.mark.parametrize(
    "settings, message",
    [({"num_cpus": 0}, "num_cpus"), ({"num_gpus": 1.5}, "num_gpus"), ({"num_gpus": -1}, "num_gpus"),
     ({"max_retries": -1}, "max_retries"), ({"threads": 0}, "threads")],
)
def test_bad_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        RayExecutor(**settings)


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec()))
    code, _, stderr = cli("sweep", path, "--out", tmp_path / "sw", "--executor", "ray", "-q")
    one_line_error(code, stderr, "pip install 'bnrank[ray]'")
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize(
    "extra, message",
    [(["--address", "auto"], "--address is for --executor ray"),
     (["--ray-num-gpus", "1"], "--ray-num-gpus is for --executor ray"),
     (["--executor", "ray", "--workers", "2"], "--workers is for --executor local"),
     (["--executor", "ray", "--ray-num-cpus", "0"], "num_cpus per task must be > 0")],
)
def test_cli_executor_options_that_do_not_fit_are_one_line_errors(tmp_path, extra, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec()))
    code, _, stderr = cli("sweep", path, "--out", tmp_path / "sw", "-q", *extra)
    one_line_error(code, stderr, message)
    assert not (tmp_path / "sw").exists()
