import json

import pandas as pd
import pytest
import torch

import bnrank
from bnrank.errors import StoreError
from conftest import tiny_config


def test_train_writes_a_complete_run_and_load_run_reads_it_back(tmp_path):
    run = bnrank.train(tiny_config(), out=tmp_path / "run", progress=False)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.safetensors", "config.yaml", "data.safetensors", "metrics.parquet", "summary.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left over
    back = bnrank.load_run(tmp_path / "run")
    assert back.config == run.config
    pd.testing.assert_frame_equal(back.metrics, run.metrics)
    torch.testing.assert_close(back.model(back.task.x_train.float()), run.model(run.task.x_train.float()))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [m["member"] for m in summary["members"]] == [0, 1]
    assert {"objective", "mse", "test_mse", "param_norm_sq", "diverged", "converged"} <= set(summary["members"][0])
    assert summary["versions"]["torch"] == torch.__version__ and summary["wall_time_s"] > 0


def test_same_config_and_seed_give_identical_metrics():
    a = bnrank.train(tiny_config(), progress=False)
    b = bnrank.train(tiny_config(), progress=False)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    c = bnrank.train(tiny_config(seed=1), progress=False)
    assert not a.metrics.objective.equals(c.metrics.objective)


def test_existing_run_is_not_replaced_without_overwrite(tmp_path):
    bnrank.train(tiny_config(), out=tmp_path / "run", progress=False)
    with pytest.raises(StoreError, match="already exists"):
        bnrank.train(tiny_config(), out=tmp_path / "run", progress=False)
    bnrank.train(tiny_config(seed=3), out=tmp_path / "run", overwrite=True, progress=False)
    assert bnrank.load_run(tmp_path / "run").config.seed == 3


def test_incomplete_or_corrupt_runs_are_store_errors(tmp_path):
    bnrank.train(tiny_config(), out=tmp_path / "run", progress=False)
    (tmp_path / "run" / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="checkpoint"):
        bnrank.load_run(tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(StoreError, match="missing summary.json"):
        bnrank.load_run(tmp_path / "run")
    with pytest.raises(StoreError, match="not a run directory"):
        bnrank.load_run(tmp_path / "nothing")
