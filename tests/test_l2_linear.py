"""The l2-linear experiment end to end at a tiny size: its numbers are the tables' numbers."""

import json

import numpy as np
import pandas as pd
import pytest

from bnrank.errors import ConfigError
from bnrank.experiments import get_experiment
from bnrank.experiments.dln import rank_jumps
from bnrank.experiments.l2_linear import matrix_rank


def test_matrix_rank_is_relative_and_marks_diverged_rows():
    sv = np.array([[4.0, 0.05, 0.03], [1.0, 0.5, 0.0], [np.nan, np.nan, np.nan]])
    assert matrix_rank(sv, 1e-2).tolist() == [2, 2, -1]  # 0.05 > 0.04 > 0.03
    assert matrix_rank(sv, 0.1).tolist() == [1, 2, -1]


def test_l2_linear_tiny_end_to_end(tmp_path):
    out = tmp_path / "l2"
    summary = get_experiment("l2-linear").run("tiny", out, progress=False)
    for name in ("minima", "sgd_ranks", "depth"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    minima = pd.read_parquet(out / "minima.parquet")
    np.testing.assert_allclose(minima.gap, (minima.param_norm_sq - minima.closed_form_cost).abs() / minima.closed_form_cost)
    assert summary["checks"]["minima_ranks_differ"] == (minima["rank"].nunique() >= 2)
    sgd = pd.read_parquet(out / "sgd.parquet")
    ups = downs = 0
    for _, trace in sgd[sgd.kind == "sgd"].groupby(["repeat", "init_scale", "seed"]):
        up, down = rank_jumps(trace.sort_values("step")["rank"])
        ups, downs = ups + up, downs + down
    assert (ups, downs) == (summary["sgd"]["sgd_up_jumps"], summary["sgd"]["sgd_down_jumps"])
    assert summary["checks"]["sgd_one_way"] == (ups == 0 and downs > 0)
    depth = pd.read_parquet(out / "depth.parquet")
    assert summary["depth"] == {str(d): g["rank"].tolist() for d, g in depth.groupby("depth")}
    assert summary["passed"] == all(summary["checks"].values())
    with pytest.raises(ConfigError, match="only device"):
        get_experiment("l2-linear").run("tiny", tmp_path / "x", overrides=["train.lam=1"])
    assert not (tmp_path / "x").exists()
