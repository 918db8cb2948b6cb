import json

import pandas as pd
import pytest
import torch

from bnrank.errors import ConfigError
from bnrank.experiments import get_experiment, iclr_rank
from bnrank.runs import load_run


def test_tiny_preset_writes_figures_layers_run_and_summary(tmp_path):
    out = tmp_path / "iclr"
    summary = get_experiment("iclr-rank").run("tiny", out, progress=False)
    for name in ("weights", "activations", "nonlinearity"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    depth = iclr_rank.PRESETS["tiny"].depth
    layers = pd.read_parquet(out / "layers.parquet")
    assert len(layers) == depth
    assert summary["weight_ranks"] == [layers["rank"].tolist()]
    assert summary["act_ranks"] == [layers["act_rank"].tolist()]
    assert summary["mid_weight_rank"] == [layers["rank"].iloc[(depth + 1) // 2 - 1]]
    assert summary["mid_act_rank"] == [layers["act_rank"].iloc[(depth + 1) // 2 - 1]]
    assert summary["param_norm_sq_over_depth"][0] == pytest.approx(summary["param_norm_sq"][0] / depth)
    assert summary["lam"] == pytest.approx(0.05 / depth)
    assert summary["nonlin_impact"][0][-1] is None and len(summary["nonlin_impact"][0]) == depth
    assert summary["passed"] == all(summary["checks"].values())
    run = load_run(out / "run")
    assert run.config.task.rank == 4 and run.task.d_in == run.task.d_out == 50
    minima = pd.read_parquet(out / "rank_minima.parquet")
    assert sorted(minima["rank_class"]) == [4, 5] and minima["best"].sum() == sum(
        c["objective"] is not None for c in summary["rank_minima"]["classes"])
    assert summary["checks"]["lowest_minimum_has_rank_4"] == (summary["rank_minima"]["lowest"] == 4)


def test_compare_minima_names_the_lower_class_and_a_class_without_a_minimum():
    rows = pd.DataFrame({"depth": 13, "rank_class": [4, 4, 5], "left_class": [False, True, False],
                         "diverged": False, "objective": [0.631, 0.600, 0.634],
                         "param_norm_sq": [140.0, 130.0, 145.0], "mse": [0.07, 0.06, 0.075]})
    out = iclr_rank.compare_minima(rows, [4, 5])
    assert out["lowest"] == 4 and [c["objective"] for c in out["classes"]] == [0.631, 0.634]
    assert out["statement"].startswith("rank 4: 0.631000") and out["statement"].endswith("lowest: rank 4")
    left = iclr_rank.compare_minima(rows.assign(left_class=[True, True, False]), [4, 5])
    assert left["lowest"] == 5 and left["classes"][0]["objective"] is None
    assert "rank 4: none (2 of 2 starts left the class)" in left["statement"]


def test_unknown_preset_and_bad_depth_fail_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="known: quick, paper"):
        iclr_rank.run("huge", tmp_path / "x")
    with pytest.raises(ConfigError, match="depth must be >= 3"):
        iclr_rank.run("tiny", tmp_path / "x", depth=2)
    assert not (tmp_path / "x").exists()


def test_overrides_change_the_run_config(tmp_path):
    summary = iclr_rank.run("tiny", tmp_path / "f64", progress=False, overrides=["dtype=float64"])
    assert summary["config"]["dtype"] == "float64"
    assert load_run(tmp_path / "f64" / "run").model.weights[0].dtype == torch.float64
    with pytest.raises(ConfigError, match="nonsense"):
        iclr_rank.run("tiny", tmp_path / "bad", progress=False, overrides=["model.nonsense=1"])
    assert not (tmp_path / "bad").exists()
