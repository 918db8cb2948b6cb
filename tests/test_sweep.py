"""Sweeps end to end: group = cells alone, tables, resume after interruption, workers, CLI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import bnrank
from bnrank.cli import app
from bnrank.errors import StoreError
from bnrank.sweep import expand, group_cells, load_spec, load_sweep, run_group, run_sweep
from bnrank.sweep.store import SweepStore
from conftest import tiny_config

RUNS_COLUMNS = [
    "cell_id", "group_id", "member", "model.depth", "train.lam", "seed", "depth", "width", "lam", "init_scale", "lr",
    "task", "task_seed", "n_train", "d_in", "d_out", "true_rank", "objective", "mse", "test_mse", "param_norm_sq",
    "grad_norm", "balance_error", "diverged", "diverged_step", "converged", "stopped_step", "mid_rank", "steps", "train_time_s",
    "threads", "wall_time_s",
]
TIMING = ["train_time_s", "wall_time_s", "threads"]


def spec(**fields) -> dict:
    """8 tiny cells in 4 groups of 2 (2 depths × 2 λ × 2 seeds), a fraction of a second each."""
    base = tiny_config()
    del base["members"]
    return {"name": "t", "base": base, "grid": {"model.depth": [2, 3], "train.lam": [0.01, 0.001]}, "trials": 2,
            "max_members": 2, "analyze": False} | fields


def parts_snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "parts").rglob("*") if p.is_file()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_groups_members_equal_their_cells_trained_alone(dtype):
    base = spec()["base"] | {"dtype": dtype}
    base["train"]["phases"] = [
        {"optimizer": "adam", "steps": 20, "lr": 0.01}, {"optimizer": "gd", "steps": 10, "lr": 0.05},
        {"optimizer": "gd", "steps": 30, "lr_sharpness": 1.0, "momentum": 0.9},
    ]
    base["train"]["stop"] = {"window": 10, "rel_tol": 1e-3, "balance_tol": 0.5, "min_steps": 30}
    grid = {"train.lam": [0.01, 0.001], "model.init_scale": [1.0, 0.5], "train.phases.1.lr": [0.05, 0.02]}
    cells = expand(load_spec(spec(base=base, grid=grid)))
    [group] = group_cells(cells, max_members=64)
    result = run_group(group)
    for e, cell in enumerate(cells):
        alone = bnrank.train(cell.config, progress=False)
        for w_alone, w_group in zip(alone.model.parameters(), result.model.parameters()):
            assert torch.equal(w_alone[0], w_group[e])  # bit-identical (inputs shared by the members)
        assert alone.summary["members"][0]["objective"] == result.tables["runs"].objective[e]


def test_members_with_their_own_task_seed_match_their_cells_alone():
    cells = expand(load_spec(spec(grid={"task.seed": [0, 1], "train.lam": [0.01]})))
    [group] = group_cells(cells, max_members=64)
    result = run_group(group)
    assert group.members == 4
    for e, cell in enumerate(cells):
        alone = bnrank.train(cell.config, progress=False)
        for w_alone, w_group in zip(alone.model.parameters(), result.model.parameters()):
            torch.testing.assert_close(w_alone[0], w_group[e], rtol=1e-5, atol=1e-6)  # stacked (E, N, d) inputs


def test_sweep_writes_documented_tables_and_reads_them_back(tmp_path):
    out = tmp_path / "sw"
    result = run_sweep(spec(analyze=True, analyze_points=5, analyze_curvature=False), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "layers.parquet", "metrics.parquet", "network.parquet", "parts", "points.parquet", "runs.parquet",
        "spec.yaml", "sweep.json",
    ]
    runs = pd.read_parquet(out / "runs.parquet")
    assert list(runs.columns) == RUNS_COLUMNS
    assert len(runs) == 8 and runs.cell_id.is_unique and runs.group_id.nunique() == 4
    assert list(runs.cell_id) == [c.cell_id for c in result.cells]  # rows in cell order
    assert (runs.depth == runs["model.depth"]).all() and (runs.lam == runs["train.lam"]).all()
    assert not runs.diverged.any() and (runs.steps == 30).all() and runs.mid_rank.between(1, 8).all()
    for name, rows in [("layers", 8 * 2.5), ("points", 8 * 5), ("network", 8), ("metrics", 8 * 4)]:
        table = pd.read_parquet(out / f"{name}.parquet")
        assert list(table.columns[:3]) == ["cell_id", "group_id", "member"] and len(table) == rows
        assert set(table.cell_id) == set(runs.cell_id)
    network = result.network.merge(runs[["cell_id", "lam", "depth"]], on="cell_id", suffixes=("", "_run"))
    assert (network.lam == network.lam_run).all() and (network.depth == network.depth_run).all()

    back = load_sweep(out)
    pd.testing.assert_frame_equal(back.runs, result.runs)
    assert back.complete and back.spec == result.spec
    cell = result.cells[5]
    net = back.model(cell.cell_id)
    task = bnrank.make_task(cell.config.task)
    mse = (net(task.x_train.float()) - task.y_train.float()).square().sum(-1).mean().item()
    assert mse == pytest.approx(runs.set_index("cell_id").mse[cell.cell_id], rel=1e-5)


class InterruptAfter:
    """An executor that runs `k` groups, then raises KeyboardInterrupt (a simulated Ctrl-C)."""

    def __init__(self, k: int):
        self.k = k

    def map(self, groups):
        for i, group in enumerate(groups):
            if i == self.k:
                raise KeyboardInterrupt
            yield run_group(group)


def test_interrupted_sweep_keeps_finished_groups_and_resumes_without_duplicates(tmp_path):
    out = tmp_path / "sw"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec(), out, executor=InterruptAfter(2), progress=False)
    partial = load_sweep(out)
    assert len(partial.runs) == 4 and not partial.complete  # consolidated on the way out
    before = parts_snapshot(out)
    result = run_sweep(spec(), out, progress=False)
    assert len(result.runs) == 8 and result.runs.cell_id.is_unique
    assert set(result.runs.cell_id) == {c.cell_id for c in result.cells}
    after = parts_snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # finished parts untouched
    assert len(after) == 2 * len(before)
    again = run_sweep(spec(), out, progress=False)  # nothing left to do: idempotent
    pd.testing.assert_frame_equal(again.runs, result.runs)
    assert parts_snapshot(out) == after


KILL_SCRIPT = """
import sys, yaml
from bnrank.sweep import run_sweep
run_sweep(yaml.safe_load(open(sys.argv[1])), sys.argv[2], progress=False)
"""


def test_sweep_killed_with_sigkill_resumes_and_loses_only_groups_in_flight(tmp_path):
    out, spec_path = tmp_path / "sw", tmp_path / "spec.yaml"
    base = spec()["base"]
    base["train"]["phases"][0]["steps"] = 300  # a few tenths of a second per group
    spec_path.write_text(yaml.safe_dump(spec(base=base, max_members=1, trials=1)))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(spec_path), str(out)], env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not SweepStore(out).part_ids():
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = SweepStore(out).part_ids()
    assert 1 <= len(finished) < 4
    before = parts_snapshot(out)
    (out / "parts" / ".0123456789ab.x1y2.tmp").mkdir()  # what a writer killed mid-write leaves
    result = run_sweep(spec_path, out, progress=False)
    assert len(result.runs) == 4 and result.runs.cell_id.is_unique
    assert not [p for p in (out / "parts").iterdir() if p.name.startswith(".")]  # staging cleared
    after = parts_snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before


def test_two_workers_give_the_same_runs_table_as_one(tmp_path):
    one = run_sweep(spec(trials=1), tmp_path / "one", workers=1, progress=False)
    two = run_sweep(spec(trials=1), tmp_path / "two", workers=2, progress=False)
    assert (two.runs.threads == max(1, len(os.sched_getaffinity(0)) // 2)).all()
    pd.testing.assert_frame_equal(one.runs.drop(columns=TIMING), two.runs.drop(columns=TIMING))


def test_threads_apply_in_process_and_the_callers_setting_is_restored(tmp_path):
    result = run_sweep(spec(grid={}, trials=1), tmp_path / "sw", threads=2, progress=False)
    assert list(result.runs.threads) == [2] and torch.get_num_threads() == 1  # conftest's setting


def test_a_directory_holding_another_sweep_is_refused(tmp_path):
    out = tmp_path / "sw"
    run_sweep(spec(grid={"model.depth": [2], "train.lam": [0.01]}), out, progress=False)
    with pytest.raises(StoreError, match=r"holds a different sweep \(spec differs at grid.train.lam.0: 0.01 here, 0.1 in the new spec\)"):
        run_sweep(spec(grid={"model.depth": [2], "train.lam": [0.1]}), out, progress=False)
    with pytest.raises(StoreError, match="spec differs at base.train.phases.0.steps: 30 here, 3 in the new spec"):
        run_sweep(spec(grid={"model.depth": [2], "train.lam": [0.01]}), out, progress=False, overrides=["train.phases.0.steps=3"])
    with pytest.raises(StoreError, match="resume is off"):
        run_sweep(spec(grid={"model.depth": [2], "train.lam": [0.01]}), out, resume=False, progress=False)
    same = run_sweep(spec(grid={"model.depth": [2], "train.lam": [0.01]}, max_members=1), out, progress=False)
    assert len(same.runs) == 2  # max_members only batches differently: same sweep
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not a sweep directory"):
        run_sweep(spec(), tmp_path / "other", progress=False)


def test_a_directory_in_use_is_refused(tmp_path):
    s = load_spec(spec())
    with SweepStore(tmp_path / "sw").writing(s):
        with pytest.raises(StoreError, match=rf"being written by another sweep driver \(pid {os.getpid()} on host"):
            run_sweep(spec(), tmp_path / "sw", progress=False)


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def test_cli_sweep_runs_and_resumes(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec()))
    code, stdout, stderr = cli("sweep", path, "--out", tmp_path / "sw", "--set", "trials=1", "-q")
    assert code == 0, stderr
    assert "4/4 cells" in stdout
    code, stdout, _ = cli("sweep", path, "--out", tmp_path / "sw", "--set", "trials=1", "-q")
    assert code == 0 and "4/4 cells" in stdout and len(load_sweep(tmp_path / "sw").runs) == 4


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("grid: {model.widht: [3]}\n", [], "grid key 'model.widht'"),
        ("trials: 0\n", [], "trials"),
        ("grid: [1, 2\n", [], "not valid YAML"),
        (None, ["--set", "grid.train.lam=[-1]"], "grid train.lam=-1"),
    ],
)
def test_cli_bad_spec_is_one_line_and_exit_code_2(tmp_path, content, extra, message):
    path = tmp_path / "s.yaml"
    path.write_text(content if content is not None else yaml.safe_dump(spec()))
    code, _, stderr = cli("sweep", path, "--out", tmp_path / "sw", "-q", *extra)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], stderr
    assert not (tmp_path / "sw").exists()


def _children(pid: int) -> set[int]:
    """The live children of `pid` (Linux /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_pool_workers_exit_when_the_sweep_process_is_killed(tmp_path):
    out, spec_path = tmp_path / "sw", tmp_path / "spec.yaml"
    base = spec()["base"]
    base["train"]["phases"][0]["steps"] = 10**7  # minutes of work per group: only a kill ends it
    spec_path.write_text(yaml.safe_dump(spec(base=base, max_members=1, trials=1, analyze=False)))
    script = KILL_SCRIPT.replace("progress=False)", "progress=False, workers=2, threads=1)")
    script = "if __name__ == '__main__':\n" + "\n".join("    " + line for line in script.strip().splitlines())
    proc = subprocess.Popen([sys.executable, "-c", script, str(spec_path), str(out)], env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    # the pool's workers are the grandchildren: the sweep process starts a forkserver, which forks them
    while len(workers := {w for c in _children(proc.pid) for w in _children(c)}) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the pool's workers never started"
        time.sleep(0.1)
    time.sleep(1.0)  # the workers are training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while alive := {w for w in workers if _alive(w)}:
        assert time.monotonic() < deadline, f"workers {sorted(alive)} outlived the killed sweep"
        time.sleep(0.2)


def test_extend_grows_a_sweep_when_every_finished_cell_stays_a_cell(tmp_path):
    out = tmp_path / "sw"
    small = spec(grid={"model.depth": [2], "train.lam": [0.01]}, trials=1)
    first = run_sweep(small, out, progress=False)
    before = parts_snapshot(out)
    grown = spec(grid={"model.depth": [2, 3], "train.lam": [0.01]}, trials=2)
    with pytest.raises(StoreError, match="or --extend to grow this sweep"):
        run_sweep(grown, out, progress=False)
    result = run_sweep(grown, out, progress=False, extend=True)
    assert len(result.runs) == 4 and set(first.runs.cell_id) <= set(result.runs.cell_id)
    assert {k: v for k, v in parts_snapshot(out).items() if k in before} == before  # finished parts untouched
    assert len(run_sweep(grown, out, progress=False).runs) == 4  # the stored spec is the grown one
    with pytest.raises(StoreError, match=r"cannot extend .*: 4 of its finished cells \(e.g. .*\) are not cells of the new spec"):
        run_sweep(spec(grid={"model.depth": [2], "train.lam": [0.01]}, trials=2, base=spec()["base"] | {"dtype": "float64"}),
                  out, progress=False, extend=True)
    assert len(load_sweep(out).runs) == 4


def test_cli_extend(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec(trials=1, grid={"model.depth": [2]})))
    assert cli("sweep", path, "--out", tmp_path / "sw", "-q")[0] == 0
    code, _, stderr = cli("sweep", path, "--out", tmp_path / "sw", "-q", "--set", "trials=2")
    assert code == 2 and "holds a different sweep (spec differs at trials: 1 here, 2 in the new spec)" in stderr
    code, stdout, _ = cli("sweep", path, "--out", tmp_path / "sw", "-q", "--set", "trials=2", "--extend")
    assert code == 0 and "2/2 cells" in stdout
