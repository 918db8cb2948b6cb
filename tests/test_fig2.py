import json
import math
from pathlib import Path

import pytest
import torch

from bnrank.config import SymmetryTask, read_yaml
from bnrank.errors import ConfigError
from bnrank.experiments import fig2, get_experiment
from bnrank.measure.symmetry import count_crossings
from bnrank.runs import load_run
from bnrank.tasks.symmetry import RotationDynamics


@pytest.mark.parametrize(
    "ranks, layers, k",
    [
        ([3, 5, 2, 2, 3, 2, 2, 2, 4, 6], [6, 7, 8], 2),  # the longest run of the smallest rank
        ([3, 2, 2, 4, 2, 2, 5], [2, 3], 2),  # ties: the first run
        ([3, 9, 1, 9, 2], [3], 1),  # a single layer of smaller rank wins
        ([1, 2, 2, 1], [2, 3], 2),  # first and last layers do not count
        ([3, 20], [], 0),  # no interior layer
    ],
)
def test_bottleneck_rule(ranks, layers, k):
    assert fig2.bottleneck_layers(ranks) == (layers, k)


def test_path_starts_lie_on_the_circles_and_do_not_cross_in_the_quotient():
    d = RotationDynamics.from_config(SymmetryTask(axis=(1.0, 1.0, 1.0)))
    starts = fig2.path_starts(d, 11, (0.5, 1.2), torch.Generator().manual_seed(0))
    assert starts.shape == (11, 3)
    norms = starts.norm(dim=1)
    assert torch.allclose(norms[:6], torch.full((6,), 0.5, dtype=torch.float64))
    assert torch.allclose(norms[6:], torch.full((5,), 1.2, dtype=torch.float64))
    polar = torch.acos((starts @ d.axis) / norms)
    assert (polar > 0).all() and (polar < math.pi).all() and len(set(polar.round(decimals=6).tolist())) == 11
    assert count_crossings(list(d.invariants(d.path(starts)).numpy())) == 0


def tiny_config() -> dict:
    cfg = fig2._config(depth=6, width=12, lam=1e-3, n_train=48, adam_steps=60, descent_steps=10, polish_steps=10)
    cfg["task"]["n_test"] = 24
    cfg["task"]["path_length"] = 4
    return cfg


def test_fig2_smoke_writes_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "fig2"
    summary = fig2.run(
        "quick", out, progress=False, overrides=["dtype=float64"], config=tiny_config(),
        projection_layer=3, orbit_points=12, orbit_samples=3, grid=15, n_paths=10,
    )
    for name in ("fig2a", "fig2b", "fig2c"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert (out / "layers.parquet").is_file()
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    keys = ("weight_ranks", "bottleneck_layers", "bottleneck_rule", "orbit_collapse", "bottleneck_orbit_collapse_max",
            "path_crossings", "train_mse", "test_mse", "checks", "passed")
    for key in keys:
        assert key in summary
    assert len(summary["weight_ranks"]) == 6 and len(summary["orbit_collapse"]) == 6
    assert summary["n_paths"] == 10 and summary["quotient_crossings"] == 0 and summary["config"]["dtype"] == "float64"
    assert load_run(out / "run").model.depth == 6
    assert "orbit collapse" in capsys.readouterr().out


def test_fig2_is_registered_and_rejects_bad_options(tmp_path):
    assert get_experiment("fig2") is fig2 and {"quick", "paper"} <= set(fig2.PRESETS)
    model = fig2.PRESETS["paper"].config["model"]
    assert (model["depth"], model["width"]) == (25, 200)
    assert fig2.PRESETS["paper"].config["train"]["lam"] == 2e-4
    with pytest.raises(ConfigError, match="unknown preset"):
        fig2.run("huge", tmp_path / "a")
    with pytest.raises(ConfigError, match="unexpected keyword"):
        fig2.run("quick", tmp_path / "b", projection_leyer=3)
    with pytest.raises(ConfigError, match="projection_layer = 6 must be a hidden layer 1..5"):
        fig2.run("quick", tmp_path / "c", config=tiny_config())
    composition = tiny_config() | {"task": {"kind": "composition", "d_in": 3}}
    with pytest.raises(ConfigError, match="task.kind must be 'symmetry'"):
        fig2.run("quick", tmp_path / "d", config=composition)
    assert not any(tmp_path.iterdir())


def test_example_config_is_the_quick_preset():
    example = Path(__file__).parents[1] / "examples" / "fig2-quick-run.yaml"
    assert read_yaml(example) == fig2.PRESETS["quick"].config
