"""Deep-linear-network trajectory tools (bnrank.experiments.dln) and the saddle-to-saddle experiment."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bnrank.errors import ConfigError, ModelError
from bnrank.experiments import get_experiment
from bnrank.experiments.dln import end_to_end, log_steps, plateaus, rank_jumps, train_dln
from bnrank.experiments.saddle_to_saddle import learning_times
from bnrank.models import EnsembleMLP

F64 = torch.float64


def test_rank_jump_counter_on_a_hand_made_trajectory():
    assert rank_jumps([0, 1, 1, 3, 2, 2, 0, 1]) == (3, 2)  # up: 0→1, 1→3, 0→1; down: 3→2, 2→0
    assert rank_jumps([4, 4, 4]) == (0, 0)
    assert rank_jumps([5, 4, 3, 3, 2]) == (0, 3)


def test_plateau_detection_on_a_synthetic_staircase():
    t = np.geomspace(1e-2, 1e4, 400)
    # levels 10 → 1 → 0.1 with sharp drops (in log t) at t = 1 and t = 100
    loss = 0.1 + 0.9 / (1 + (t / 100) ** 12) + 9 / (1 + t**12)
    found = plateaus(t, loss, slope_tol=0.1, min_decades=0.5)
    assert len(found) == 3
    (a0, a1, l0), (b0, b1, l1), (c0, c1, l2) = found
    assert a0 == pytest.approx(1e-2) and 0.5 < a1 < 1 and 1 < b0 < 2 and 50 < b1 < 100 and 100 < c0 < 200 and c1 == pytest.approx(1e4)
    assert l0 == pytest.approx(10, rel=0.01) and l1 == pytest.approx(1, rel=0.02) and l2 == pytest.approx(0.1, rel=0.01)
    assert plateaus(t, 1 / t) == []  # a power law with slope −1 has no plateau


def _net(members=2, dims=(3, 4, 4, 2), scale=0.5):
    return EnsembleMLP.init(members, list(dims), seeds=list(range(members)), init_scale=scale, dtype=F64,
                            activation="linear", bias=False)


def test_train_dln_gd_steps_are_those_of_the_objective_gradient():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=gen, dtype=F64), torch.randn(6, 2, generator=gen, dtype=F64)
    lam, lr = torch.tensor([0.0, 0.1], dtype=F64), 0.05
    net, ref = _net(), _net()
    traj = train_dln(net, x, y, lam, lr, 4, [0, 2, 4])
    for _ in range(4):
        _, _, _, grads = ref.objective_and_grads(x, y, lam)
        with torch.no_grad():
            for w, g in zip(ref.weights, grads):
                w.sub_(lr * g)
    for a, b in zip(net.weights, ref.weights):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-12)
    assert list(traj.steps) == [0, 2, 4] and traj.singular_values.shape == (3, 2, 2)
    obj, err, norm, _ = ref.objective_and_grads(x, y, lam)
    np.testing.assert_allclose(traj.fit[-1], err.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(traj.objective[-1], obj.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(traj.singular_values[-1], torch.linalg.svdvals(end_to_end(ref.weights)).detach().numpy(), rtol=1e-12)


def test_a_full_mask_is_the_unmasked_objective_and_sgd_on_entries_is_unbiased():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.eye(3, dtype=F64), torch.randn(3, 2, generator=gen, dtype=F64)
    full = torch.ones(3, 2, dtype=torch.bool)
    a = train_dln(_net(), x, y, 0.01, 0.05, 3, [3])
    b = train_dln(_net(), x, y, 0.01, 0.05, 3, [3], mask=full)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-12)
    # SGD over all 6 entries in one batch is GD
    c = train_dln(_net(), x, y, 0.01, 0.05, 3, [3], mask=full, batch_size=6)
    np.testing.assert_allclose(c.objective, b.objective, rtol=1e-12)
    with pytest.raises(ModelError, match="linear net without biases"):
        relu = EnsembleMLP.init(1, [3, 4, 2], dtype=F64)
        train_dln(relu, x, y, 0.0, 0.1, 1, [1])


def test_log_steps():
    s = log_steps(1000, 20)
    assert s[0] == 0 and s[-1] == 1000 and np.all(np.diff(s) > 0) and 15 <= len(s) <= 22


def test_saddle_to_saddle_tiny_end_to_end(tmp_path):
    out = tmp_path / "s2s"
    summary = get_experiment("saddle-to-saddle").run("tiny", out, progress=False)
    for name in ("loss", "singular_values", "scaling"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    traj = pd.read_parquet(out / "trajectories.parquet")
    trans = pd.read_parquet(out / "transitions.parquet")
    planted = summary["planted"]
    for (depth, alpha, seed), run in traj.groupby(["depth", "alpha", "seed"]):
        sv = run[[f"s{q + 1}" for q in range(len(planted))]].to_numpy()
        expect = learning_times(run.time.to_numpy(), sv, planted)
        got = trans[(trans.depth == depth) & (trans.alpha == alpha) & (trans.seed == seed)].sort_values("mode").t
        np.testing.assert_allclose(got, expect)
    assert summary["checks"]["modes_in_order"] == bool(trans.groupby(["depth", "alpha", "seed"]).t.apply(
        lambda t: np.all(np.diff(t.to_numpy()) > 0)).all())
    assert summary["passed"] == all(summary["checks"].values())
    with pytest.raises(ConfigError, match="known: quick, paper"):
        get_experiment("saddle-to-saddle").run("huge", tmp_path / "x")
    with pytest.raises(ConfigError, match="one entry per depth"):
        get_experiment("saddle-to-saddle").run("tiny", tmp_path / "x", times=(1.0,))
    assert not (tmp_path / "x").exists()
