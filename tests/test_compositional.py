"""The compositional-scaling experiment (bnrank.experiments.compositional) and the fibre-collapse
measure (bnrank.measure.fibres)."""

import itertools
import json
import types

import numpy as np
import pandas as pd
import pytest
import torch

from bnrank.config import MaternCompositionTask, validate
from bnrank.errors import ConfigError, DataError
from bnrank.experiments import compositional as comp
from bnrank.experiments import get_experiment
from bnrank.measure.fibres import fibre_collapse
from bnrank.tasks import make_task
from bnrank.tasks.matern import matern_composition_draw, sample_matern_composition


# -- fibre collapse -----------------------------------------------------------------------------------


def _grid():
    """A 3 × 3 grid in the plane, g(x) = x_1: of its 36 pairs, 9 lie on a fibre (same x_1)."""
    x = torch.tensor(list(itertools.product([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])), dtype=torch.float64)
    return x, x[:, :1]


def test_fibre_collapse_is_one_for_the_input_and_zero_for_functions_of_g():
    x, g = _grid()
    assert fibre_collapse(x, g, x, near_fraction=0.25).item() == pytest.approx(1.0, abs=1e-15)
    assert fibre_collapse(3.0 * x @ torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64), g, x, 0.25).item() == pytest.approx(1.0, abs=1e-14)
    functions_of_g = torch.cat([g, g.square(), torch.sin(3 * g)], 1)
    assert fibre_collapse(functions_of_g, g, x, near_fraction=0.25).item() == 0.0
    assert fibre_collapse(g, g, x, near_fraction=0.25).item() == 0.0


def test_fibre_collapse_of_the_fibre_coordinate_by_hand():
    """rep = x_2 on the grid: along-fibre pairs (same x_1) have ratio (|Δx_2|/m_r)/(|Δx_2|/m_x) = m_x/m_r,
    so the value is (m_x/m_r) / mean over all pairs of (|Δx_2|/m_r)/(‖Δx‖/m_x) = 1 / mean(|Δx_2|/‖Δx‖)."""
    x, g = _grid()
    pairs = [(a, b) for a, b in itertools.combinations(x.tolist(), 2)]
    mean_ratio = np.mean([abs(a[1] - b[1]) / np.hypot(a[0] - b[0], a[1] - b[1]) for a, b in pairs])
    assert fibre_collapse(x[:, 1:], g, x, near_fraction=0.25).item() == pytest.approx(1 / mean_ratio, rel=1e-13)


def test_fibre_collapse_matches_a_brute_force_loop_and_is_batched():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    g = torch.tanh(x[:, :2] + x[:, 2:3] ** 2)
    reps = torch.randn(3, 20, 5, generator=gen, dtype=torch.float64)
    got = fibre_collapse(reps, g, x, near_fraction=0.1)
    pairs = list(itertools.combinations(range(20), 2))
    dx = np.array([float((x[i] - x[j]).norm()) for i, j in pairs])
    dg = np.array([float((g[i] - g[j]).norm()) for i, j in pairs])
    near = np.argsort(dg / dx, kind="stable")[: round(0.1 * len(pairs))]
    for e in range(3):
        dr = np.array([float((reps[e, i] - reps[e, j]).norm()) for i, j in pairs])
        ratio = (dr / dr.mean()) / (dx / dx.mean())
        assert got[e].item() == pytest.approx(ratio[near].mean() / ratio.mean(), rel=1e-12)
        assert fibre_collapse(reps[e], g, x, 0.1).item() == pytest.approx(got[e].item(), rel=1e-14)


def test_fibre_collapse_bad_input_raises_data_error():
    x, g = _grid()
    with pytest.raises(DataError, match="near_fraction"):
        fibre_collapse(x, g, x, near_fraction=0.0)
    with pytest.raises(DataError, match="one n"):
        fibre_collapse(x[:5], g, x)
    with pytest.raises(DataError, match="distinct inputs"):
        fibre_collapse(x[:2] * 0, g[:2], x[:2] * 0)


def test_matern_composition_draw_returns_the_task_and_its_g():
    cfg = validate(MaternCompositionTask, {"kind": "matern-composition", "d_in": 4, "rank": 2, "d_out": 3, "n_train": 12, "n_test": 5, "seed": 3})
    task, g = matern_composition_draw(cfg)
    x, g_raw, _, _ = sample_matern_composition(cfg)
    plain = make_task(cfg)
    assert torch.equal(g, g_raw) and g.shape == (17, 2)
    assert torch.equal(torch.cat([task.x_train, task.x_test]), x)
    assert torch.equal(task.y_train, plain.y_train) and torch.equal(task.y_test, plain.y_test)


# -- rates, selection and checks on planted data ------------------------------------------------------


PRESET = comp.Preset(sizes=(100, 200, 400, 800), nus=((0.5, 0.5), (2.5, 0.5), (8.0, 0.5)), seeds=(0, 1))


def _planted(rates: dict) -> pd.DataFrame:
    """Selected rows with test error = 2·N^(−rate) exactly, two seeds, for {(ν_g, ν_h, method): rate}."""
    rows = [{"nu_g": g, "nu_h": h, "n": n, "seed": s, "method": m, "test_error": 2.0 * n ** -r}
            for (g, h, m), r in rates.items() for n in PRESET.sizes for s in PRESET.seeds]
    return pd.DataFrame(rows)


def test_fit_exponents_recovers_planted_rates():
    fits = comp.fit_exponents(_planted({(2.5, 0.5, "deep"): 0.33, (2.5, 0.5, "krr-0.5"): 0.07}))
    assert fits.set_index("method")["rate"].to_dict() == pytest.approx({"deep": 0.33, "krr-0.5": 0.07}, abs=1e-12)
    assert (fits["b_stderr"] < 1e-7).all()  # sqrt of a round-off residual and (fits["points"] == 8).all()


def _exponents(rates: dict, stderr: float = 0.02) -> pd.DataFrame:
    return pd.DataFrame([{"nu_g": g, "nu_h": h, "method": m, "a": 0.0, "b": -r, "b_stderr": stderr} for (g, h, m), r in rates.items()])


def test_predicted_rates_and_regimes():
    q = comp.predicted_rates(8.0, 0.5, 15, 3)
    assert q["deep_rate"] == pytest.approx(1 / 3) and q["shallow_rate"] == pytest.approx(1 / 15)
    assert q["regime"] == "h-dominated" and q["nu_g_transition"] == pytest.approx(2.5)
    assert comp.predicted_rates(2.5, 0.5, 15, 3)["regime"] == "transition"
    low = comp.predicted_rates(0.5, 0.5, 15, 3)
    assert low["regime"] == "g-dominated" and low["advantage"] == pytest.approx(1.0)


def _check(criteria, name):
    return next(c for c in criteria if c["name"] == name)


def test_checks_pass_on_rates_that_follow_the_theory():
    rates = {}
    for (g, h), deep in zip(PRESET.nus, (0.07, 0.33, 0.33)):
        rates |= {(g, h, "deep"): deep, (g, h, "shallow"): 0.08, (g, h, "krr-0.5"): 0.07, (g, h, "krr-2.5"): 0.1}
    criteria = comp.checks(_exponents(rates), PRESET)
    assert all(c["held"] for c in criteria), criteria
    kernel = _check(criteria, "deep_rate_exceeds_kernel_where_predicted")["value"]
    assert set(kernel) == {"nu_g=2.5,nu_h=0.5", "nu_g=8,nu_h=0.5"}  # the pairs with a predicted advantage
    assert kernel["nu_g=8,nu_h=0.5"]["kernel_rate"] == pytest.approx(0.1)  # the best kernel
    assert kernel["nu_g=8,nu_h=0.5"]["z"] == pytest.approx(0.23 / np.hypot(0.02, 0.02))
    rises = _check(criteria, "deep_rate_rises_with_nu_g_where_g_dominates")["value"]
    assert list(rises) == ["nu_g=0.5,nu_h=0.5 -> nu_g=2.5,nu_h=0.5"]  # 2.5 -> 8 is the plateau, not checked
    plateau = comp.transition(_exponents(rates), PRESET)[0]["plateau"]
    assert plateau == {"nu_g=2.5,nu_h=0.5 -> nu_g=8,nu_h=0.5": {"difference": 0.0, "stderr": pytest.approx(0.0283, abs=1e-4), "z": 0.0}}


def test_checks_fail_with_numbers_when_the_gap_is_within_two_stderr():
    rates = {}
    for g, h in PRESET.nus:
        rates |= {(g, h, "deep"): 0.12, (g, h, "shallow"): 0.1, (g, h, "krr-0.5"): 0.1}
    criteria = comp.checks(_exponents(rates, stderr=0.01), PRESET)
    assert not any(c["held"] for c in criteria)
    value = _check(criteria, "deep_rate_exceeds_kernel_where_predicted")["value"]["nu_g=2.5,nu_h=0.5"]
    assert value["difference"] == pytest.approx(0.02) and value["z"] == pytest.approx(0.02 / np.hypot(0.01, 0.01))


def test_checks_without_a_favoured_pair_are_not_held():
    p = comp.Preset(sizes=(100, 200), nus=((0.5, 2.5),), seeds=(0, 1))
    criteria = comp.checks(_exponents({(0.5, 2.5, "deep"): 0.5, (0.5, 2.5, "krr-0.5"): 0.1}), p)
    assert [c["held"] for c in criteria] == [False, False, False] and all(c["value"] == {} for c in criteria)


def test_mark_selected_takes_the_lowest_validation_error_ties_to_the_larger_lambda():
    errors = pd.DataFrame({"nu_g": 1.0, "nu_h": 1.0, "n": 10, "seed": 0, "method": ["deep"] * 3 + ["krr-0.5"] * 3,
                           "lam": [0.01, 0.1, 1.0] * 2, "val_error": [0.5, 0.3, 0.3, np.nan, 0.9, 0.2], "test_error": 0.0})
    assert comp.mark_selected(errors)["selected"].tolist() == [False, False, True, False, False, True]


# -- kernel ridge cache ---------------------------------------------------------------------------------


TINY = comp.PRESETS["tiny"]


def test_kernel_ridge_cells_resume_after_an_interruption(tmp_path, monkeypatch):
    """evaluate caches one file per KRR cell; an interrupted evaluation keeps the finished ones and a
    rerun computes only the rest, with the same numbers as an uninterrupted run."""
    no_nets = types.SimpleNamespace(runs=pd.DataFrame(), cells=[])
    full, _ = comp.evaluate(TINY, no_nets, tmp_path / "full")
    cells = len(TINY.nus) * len(TINY.sizes) * len(TINY.seeds) * len(TINY.krr_nus)
    assert len(list((tmp_path / "full" / "krr").glob("*.json"))) == cells
    assert len(full) == cells * len(TINY.krr_lams) and full["selected"].sum() == cells

    real, calls = comp.krr_cell, []

    def interrupted(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(comp, "krr_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        comp.evaluate(TINY, no_nets, tmp_path / "resumed")
    assert len(list((tmp_path / "resumed" / "krr").glob("*.json"))) == 2
    monkeypatch.setattr(comp, "krr_cell", lambda *args: calls.append(args) or real(*args))
    resumed, _ = comp.evaluate(TINY, no_nets, tmp_path / "resumed")
    assert len(calls) == cells  # 2 before the interruption, the rest after it
    pd.testing.assert_frame_equal(resumed, full)


def test_kernel_ridge_cell_is_fit_kernel_ridge_at_each_lambda():
    from bnrank.measure.kernel_ridge import fit_kernel_ridge, median_distance

    cfg = validate(MaternCompositionTask, comp.task_config(TINY, 24, 2.5, 0.5, 0))
    task = make_task(cfg)
    rec = comp.krr_cell(TINY, task, 0.5)
    m = comp.n_val(TINY, 24)
    for lam, val, test in zip(rec["lams"], rec["val_errors"], rec["test_errors"]):
        model = fit_kernel_ridge(task.x_train, task.y_train, lam, 0.5, median_distance(task.x_train))
        assert val == pytest.approx(model.error(task.x_test[:m], task.y_test[:m]) / TINY.d_out, rel=1e-12)
        assert test == pytest.approx(model.error(task.x_test[m:], task.y_test[m:]) / TINY.d_out, rel=1e-12)


# -- end to end -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("compositional") / "tiny"
    return out, get_experiment("compositional-scaling").run("tiny", out, progress=False)


def test_tiny_preset_writes_figures_tables_and_summary(tiny):
    out, summary = tiny
    for name in ("scaling", "rates"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    errors = pd.read_parquet(out / "errors.parquet")
    per_method = {"deep": len(TINY.net_lams), "shallow": len(TINY.net_lams), "krr-0.5": len(TINY.krr_lams)}
    points = len(TINY.nus) * len(TINY.sizes) * len(TINY.seeds)
    assert errors.groupby("method").size().to_dict() == {m: k * points for m, k in per_method.items()}
    assert errors.groupby("method")["selected"].sum().to_dict() == {m: points for m in per_method}
    assert summary["n_networks"] == 2 * len(TINY.net_lams) * points and summary["n_diverged"] == 0
    exponents = pd.read_parquet(out / "exponents.parquet")
    assert len(exponents) == len(TINY.nus) * len(per_method) and np.isfinite(exponents["rate"]).all()
    assert [c["name"] for c in summary["checks"]] == [
        "deep_rate_exceeds_kernel_where_predicted", "deep_rate_exceeds_shallow_net_where_predicted",
        "deep_rate_rises_with_nu_g_where_g_dominates"]
    assert summary["passed"] == all(c["held"] for c in summary["checks"])
    bottleneck = pd.read_parquet(out / "bottleneck.parquet")
    assert len(bottleneck) == 2 * points and set(bottleneck["depth"]) == {TINY.deep_depth, 2}
    assert ((bottleneck["g_collapse"] >= 0) & (bottleneck["g_collapse"] < 1)).all()
    assert {b["method"] for b in summary["bottleneck"]} == {"deep", "shallow"}


def test_rerun_resumes_without_retraining_or_refitting(tiny, monkeypatch):
    out, summary = tiny
    monkeypatch.setattr(comp, "krr_cell", lambda *a: pytest.fail("a cached KRR cell was recomputed"))
    monkeypatch.setattr(comp, "net_cell", lambda *a: pytest.fail("a cached net was re-evaluated"))
    again = comp.run("tiny", out, progress=False)
    assert again["exponents"] == summary["exponents"] and again["checks"] == summary["checks"]


def test_bad_preset_values_fail_before_anything_is_written(tmp_path):
    for options, message in [({"nus": ((0.0, 1.0),)}, "nu_g"), ({"sizes": (16,)}, "2 sizes"),
                             ({"deep_depth": 2}, "deep_depth"), ({"sizes": (16, 24, 20000)}, "exceeds 20000")]:
        with pytest.raises(ConfigError, match=message):
            comp.run("tiny", tmp_path / "out", progress=False, **options)
        assert not (tmp_path / "out").exists()
