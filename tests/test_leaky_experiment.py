import json

import pandas as pd
import pytest

from bnrank.errors import ConfigError
from bnrank.experiments import get_experiment, leaky_resnet
from bnrank.runs import load_run


def test_tiny_preset_writes_runs_tables_figures_and_summary(tmp_path):
    out = tmp_path / "leaky"
    summary = get_experiment("leaky-resnet").run("tiny", out, progress=False)
    for name in ("jumps", "hamiltonian", "spectra", "adaptive"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    network = pd.read_parquet(out / "network.parquet")
    layers = pd.read_parquet(out / "layers.parquet")
    spec = leaky_resnet.PRESETS["tiny"]
    assert sorted(map(tuple, network[["variant", "effective_depth"]].values.tolist())) == [
        ("adaptive", 4.0), ("uniform", 1.0), ("uniform", 4.0)]
    assert len(layers) == 3 * (spec.depth + 1)
    top = network[(network.variant == "uniform") & (network.effective_depth == 4.0)]
    assert summary["checks"]["bottleneck_rank_is_k_star"] == bool((top.bottleneck_rank == 3).all())
    assert summary["checks"]["neg2h_near_k_star"] == bool(abs(top.neg2h.median() - 3) <= 1)
    assert summary["passed"] == all(summary["checks"].values())
    uniform = load_run(out / "runs" / "uniform-Lt4")
    adaptive = load_run(out / "runs" / "adaptive-Lt4")
    assert uniform.model.steps.tolist() == [0.25] * 4 and adaptive.model.steps.tolist() != [0.25] * 4
    assert adaptive.config.train.adaptive_steps is not None


def test_bad_effective_depths_fail_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="known: quick, paper"):
        leaky_resnet.run("huge", tmp_path / "x")
    with pytest.raises(ConfigError, match="effective_depths"):
        leaky_resnet.run("tiny", tmp_path / "x", effective_depths=(0.0, 1.0))
    assert not (tmp_path / "x").exists()
