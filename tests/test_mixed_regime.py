"""The mixed-regime experiment end to end at a tiny size: the summary is computed from its table."""

import json

import numpy as np
import pandas as pd
import pytest

from bnrank.errors import ConfigError
from bnrank.experiments import get_experiment


def test_mixed_regime_tiny_end_to_end(tmp_path):
    out = tmp_path / "mr"
    summary = get_experiment("mixed-regime").run("tiny", out, progress=False)
    for ext in ("png", "svg"):
        assert (out / f"phase_diagram.{ext}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 4 and list(runs.width) == [5, 5, 28, 28]  # round(8^0.8), round(8^1.6)
    np.testing.assert_array_equal(runs.lazy_side, runs.gamma_sigma_sq + runs.gamma_w > 1)
    ok = runs[~runs.diverged]
    for name, side in (("lazy", ok[ok.lazy_side]), ("active", ok[~ok.lazy_side])):
        assert summary["regions"][name]["median_rank"] == side["rank"].median()
        assert summary["regions"][name]["median_distance"] == pytest.approx(side.distance.median())
    assert summary["checks"]["lazy_moves_less"] == (summary["regions"]["lazy"]["median_distance"]
                                                    < summary["regions"]["active"]["median_distance"])
    assert (runs.best_step <= 300).all() and (runs.test_error > 0).all()
    with pytest.raises(ConfigError, match="k must be in 1..d"):
        get_experiment("mixed-regime").run("tiny", tmp_path / "x", k=20)
    assert not (tmp_path / "x").exists()
