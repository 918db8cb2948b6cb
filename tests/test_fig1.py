import json

import numpy as np
import pandas as pd
import pytest

from bnrank.errors import ConfigError
from bnrank.experiments import fig1, get_experiment
from bnrank.measure.rank_minima import best_minima
from bnrank.measure.theory import fit_depth_expansion

SUMMARY_KEYS = {"preset", "lam", "threshold", "cost_max", "rank_rule", "fit_rule", "minor_fraction", "minor_scale", "depths", "rank_classes",
                "acceptance", "n_networks", "n_diverged", "fig1b_trials", "sweep", "wall_time_s", "minima_rule",
                "minima_classes", "crossings", "acceptance_by_networks"}
CLASS_KEYS = {"rank", "depths", "n_networks", "slope", "slope_stderr", "intercept", "intercept_stderr",
              "expansion_slope", "expansion_slope_stderr", "expansion_intercept", "r2_coef", "r2_coef_stderr",
              "checked_fit", "checked_slope",
              "r1_lower_bound", "r1_lower_bound_jac"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig1") / "tiny"
    return out, get_experiment("fig1").run("tiny", out, progress=False)


def test_tiny_preset_writes_figures_tables_and_summary(tiny):
    out, summary = tiny
    for name in ("fig1a", "fig1b"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert SUMMARY_KEYS <= set(summary)
    preset = fig1.PRESETS["tiny"]
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == summary["n_networks"] == len(preset.depths) * preset.trials
    assert (runs["rank"] == runs["mid_rank"]).all()
    assert {"jac_rank", "r1_lower_bound", "r1_at_rank", "param_norm_sq", "mse", "diverged"} <= set(runs.columns)
    assert [d["depth"] for d in summary["depths"]] == list(preset.depths)
    for c in summary["rank_classes"]:
        assert set(c) == CLASS_KEYS
        assert c["depths"] == sorted(runs.loc[runs["rank"] == c["rank"], "depth"].unique().tolist())
    criteria = summary["acceptance"]["criteria"]
    assert [c["name"] for c in criteria] == ["rank_2_range", "smaller_rank_deeper", "rank_falls_with_depth", "slope_equals_rank"]
    assert all(isinstance(c["held"], bool) and c["statement"] for c in criteria)
    assert summary["acceptance"]["passed"] == all(c["held"] for c in criteria)
    assert set(summary["fig1b_trials"]) <= set(runs["cell_id"])


def test_per_rank_minima_are_written_and_the_checks_read_ranks_by_minima(tiny):
    out, summary = tiny
    rows = pd.read_parquet(out / "rank_minima.parquet")
    classes = fig1.minima_classes(pd.DataFrame(summary["depths"]))
    assert sorted(set(rows["depth"])) == sorted(classes)
    for d, group in rows.groupby("depth"):
        assert set(group["rank_class"]) <= set(classes[d])
        assert (out / "minima" / f"depth_{d:03d}.parquet").is_file()
    best = best_minima(rows)
    for row in summary["depths"]:
        mine = best[best["depth"] == row["depth"]]
        assert [m["rank"] for m in row["minima"]] == mine["rank_class"].tolist()
        assert row["rank_by_minima"] == (mine.loc[mine["objective"].idxmin(), "rank_class"] if len(mine) else -1)
    monotone = next(c for c in summary["acceptance"]["criteria"] if c["name"] == "rank_falls_with_depth")
    assert monotone["value"] == [r["rank_by_minima"] for r in summary["depths"] if r["rank_by_minima"] >= 0]


def test_rerun_resumes_the_sweep_and_the_minima(tiny):
    out, summary = tiny
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "minima").glob("depth_*.parquet")}
    again = fig1.run("tiny", out, progress=False)
    assert again["rank_classes"] == summary["rank_classes"] and again["depths"] == summary["depths"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "minima").glob("depth_*.parquet")} == stamps
    assert again["wall_time_s"] < summary["wall_time_s"]  # nothing retrained


def test_rank_class_fits_are_fit_depth_expansion_of_one_row_per_network(tiny):
    out, summary = tiny
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs["cell_id"].is_unique
    fits = fit_depth_expansion(runs.loc[~runs["diverged"], ["depth", "param_norm_sq", "rank"]])
    assert fits["rank"].tolist() == [c["rank"] for c in summary["rank_classes"]]
    assert fits["n_networks"].tolist() == [c["n_networks"] for c in summary["rank_classes"]]
    expansion = fit_depth_expansion(runs.loc[~runs["diverged"], ["depth", "param_norm_sq", "rank"]], with_r2=True)
    for fit, exp, c in zip(fits.itertuples(), expansion.itertuples(), summary["rank_classes"]):
        assert (c["slope"] is None and np.isnan(fit.slope)) or c["slope"] == pytest.approx(fit.slope)
        assert (c["expansion_slope"] is None and np.isnan(exp.slope)) or c["expansion_slope"] == pytest.approx(exp.slope)


def _runs(rows):
    """Hand-made runs table from (depth, rank, mse, param_norm_sq) tuples, two per depth allowed."""
    df = pd.DataFrame(rows, columns=["depth", "rank", "mse", "param_norm_sq"])
    df["objective"] = df["mse"] + 1e-3 * df["param_norm_sq"]
    df["diverged"] = False
    df["seed"] = df.groupby("depth").cumcount()
    return df


def _phenomenon():
    """Rank 3 at depths 4–6, rank 2 (slope 2) at 8–14, rank 1 (failed fits) at 16–20."""
    rows = [(d, 3, 0.01, 3 * d + 10) for d in (4, 5, 6)]
    rows += [(d, 2, 0.02, 2 * d + 20 + 0.1 * (-1) ** d) for d in (8, 10, 12, 14)]
    rows += [(d, 1, 0.5, 1 * d + 35) for d in (16, 18, 20)]
    rows += [(10, 3, 0.02, 70.0)]  # a second seed at depth 10 stuck at a worse (rank-3) minimum
    return _runs(rows)


def test_acceptance_holds_on_a_table_showing_the_phenomenon():
    runs = _phenomenon()
    depths = fig1.depth_table(runs)
    assert depths.loc[depths.depth == 10, "rank"].item() == 2  # the lower-objective seed decides
    assert depths.loc[depths.depth == 10, "ranks"].item() == [2, 3]
    result = fig1.acceptance(depths, fig1.fit_rank_classes(runs))
    held = {c["name"]: c["held"] for c in result["criteria"]}
    assert held == {"rank_2_range": True, "smaller_rank_deeper": True, "rank_falls_with_depth": True,
                    "slope_equals_rank": False}
    # the stuck rank-3 seed at depth 10 spoils the rank-3 slope; without it every criterion holds
    clean = runs[~((runs.depth == 10) & (runs["rank"] == 3))]
    result = fig1.acceptance(fig1.depth_table(clean), fig1.fit_rank_classes(clean))
    assert result["passed"] and result["criteria"][0]["value"] == [8, 10, 12, 14]


@pytest.mark.parametrize("change, failing", [
    (lambda r: r.assign(mse=np.where(r.depth == 10, 0.3, r.mse)), "rank_2_range"),  # the range is broken at 10
    (lambda r: r.assign(rank=np.where(r.depth >= 16, 2, r["rank"])), "smaller_rank_deeper"),
    (lambda r: r.assign(rank=np.where(r.depth == 5, 4, r["rank"])), "rank_falls_with_depth"),  # 3, 4, 3: rises at 5
    (lambda r: r.assign(param_norm_sq=np.where(r["rank"] == 2, 1.5 * r.depth + 25, r.param_norm_sq)), "slope_equals_rank"),
])
def test_acceptance_fails_when_a_criterion_does_not_hold(change, failing):
    runs = change(_phenomenon().query("not (depth == 10 and rank == 3)"))
    result = fig1.acceptance(fig1.depth_table(runs), fig1.fit_rank_classes(runs))
    held = {c["name"]: c["held"] for c in result["criteria"]}
    assert not held[failing] and not result["passed"]


def test_representative_trials_take_one_network_per_rank_class_first():
    runs = _phenomenon()
    runs["cell_id"] = [f"c{i}" for i in range(len(runs))]
    trials = fig1.representative_trials(runs)
    assert len(trials) == 4 and set(trials["rank"]) == {1, 2, 3}
    assert trials["depth"].is_monotonic_increasing


def test_unknown_preset_and_option_fail_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="known: quick, paper"):
        fig1.run("huge", tmp_path)
    with pytest.raises(ConfigError, match="fig1"):
        fig1.run("tiny", tmp_path, depth=3)


def test_expansion_fit_recovers_the_rank_where_the_affine_slope_is_biased():
    """‖θ‖² = 3L + 10 + 60/L exactly: the affine slope over L = 4..8 is well below 3, the
    expansion's slope is 3."""
    runs = _runs([(d, 3, 0.01, 3 * d + 10 + 60 / d) for d in (4, 5, 6, 7, 8)])
    fits = fig1.fit_rank_classes(runs)
    fit = fits.iloc[0]
    assert fit.slope < 2.5
    assert fit.expansion_slope == pytest.approx(3.0) and fit.r2_coef == pytest.approx(60.0)
    # the slope check reads the expansion where R⁽²⁾ is significant (SLOPE_RULE): it holds
    # here, and fails once the points are tilted to slope 2 (+ 60/L)
    slope_check = lambda f: {c["name"]: c for c in fig1.acceptance(fig1.depth_table(runs), f)["criteria"]}["slope_equals_rank"]
    assert fit.checked_fit == "expansion" and fit.checked_slope == pytest.approx(3.0)
    assert slope_check(fits)["held"] and slope_check(fits)["value"] == {3: True}
    tilted = _runs([(d, 3, 0.01, 2 * d + 10 + 60 / d) for d in (4, 5, 6, 7, 8)])
    assert not slope_check(fig1.fit_rank_classes(tilted))["held"]


def test_slope_check_reads_the_affine_fit_where_r2_is_not_determined():
    """Slope-2 points with noise at large depths only: the R⁽²⁾/L term is not significant and
    the three-term fit's slope is far off, so the affine slope is the one checked."""
    noise = np.random.default_rng(0).normal(0, 1.0, 14)
    runs = _runs([(d, 2, 0.01, 2 * d + 35 + e) for d, e in zip(np.repeat(range(16, 29, 2), 2), noise)])
    fit = fig1.fit_rank_classes(runs).iloc[0]
    assert abs(fit.r2_coef) < 2 * fit.r2_coef_stderr and fit.checked_fit == "affine"
    assert fit.checked_slope == fit.slope == pytest.approx(2.0, abs=0.3)
    assert fit.expansion_slope_stderr > fit.slope_stderr * 3


def test_fig1a_draws_the_affine_fit_and_the_expansion_curve():
    from bnrank.plots.fig1 import plot_norm_vs_depth

    runs = _runs([(d, 3, 0.01, 3 * d + 10 + 60 / d) for d in (4, 5, 6, 7, 8)])
    ax = plot_norm_vs_depth(runs, fig1.fit_rank_classes(runs)).axes[0]
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(solid) == 1 and len(dashed) == 1
    x, y = dashed[0].get_data()
    assert x[0] == 4 and x[-1] == 8 and np.allclose(y, 3 * x + 10 + 60 / x)
    x, y = solid[0].get_data()
    affine = np.polyfit(runs["depth"], runs["param_norm_sq"], 1)
    assert np.allclose(y, np.polyval(affine, x))


def test_overrides_reach_the_sweep_and_a_bad_one_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "f64"
    summary = fig1.run("tiny", out, progress=False, overrides=["dtype=float64"], workers=2, depths=(3,))
    runs = pd.read_parquet(out / "sweep" / "runs.parquet")
    assert summary["n_networks"] == len(runs) == fig1.PRESETS["tiny"].trials
    assert "dtype: float64" in (out / "sweep" / "spec.yaml").read_text()
    with pytest.raises(ConfigError, match="nonsense"):
        fig1.run("tiny", tmp_path / "bad", progress=False, overrides=["model.nonsense=1"])
    assert not (tmp_path / "bad").exists()


def test_printed_table_marks_the_checked_fit_only_where_the_slope_check_reads_the_class(tmp_path, capsys):
    depths = pd.DataFrame({"depth": [4, 6, 8, 10, 12], "rank": [2, 2, 2, 1, 1], "fitted": True, "mse": 0.01,
                           "ranks": [[2], [2], [2], [1], [1]]})
    runs = pd.DataFrame({"depth": [4, 6, 8, 10, 12], "param_norm_sq": [10.0, 14.0, 18.0, 12.0, 13.0],
                         "rank": [2, 2, 2, 1, 1], "diverged": False, "jac_rank": [2, 2, 2, 1, 1],
                         "r1_lower_bound": 0.0, "r1_at_rank": 0.0})
    fits = fig1.fit_rank_classes(runs)
    records = [row | {"rank_by_minima": row["rank"], "minima": []} for row in depths.to_dict(orient="records")]
    summary = {"lam": 1e-3, "depths": records, "rank_classes": fig1.rank_classes(runs, fits), "crossings": [],
               "acceptance": fig1.acceptance(depths, fits), "wall_time_s": 1.0, "n_networks": 5, "n_diverged": 0}
    summary = json.loads(json.dumps(summary))  # as summary.json reads back: the check's keys become strings
    fig1._print_tables(summary, tmp_path)
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    rows = {words[0]: " ".join(words) for words in lines if words and words[0] in ("1", "2") and "±" in " ".join(words)}
    assert "2.00±0.00*" in rows["2"]  # three depths: the slope check reads its affine fit
    assert "*" not in rows["1"]  # two depths: not checked, so not marked


def test_minima_classes_are_the_seen_ranks_and_rank_1_adjacent_to_each_depths_rank():
    depths = pd.DataFrame({"depth": [4, 6, 8, 10], "rank": [5, 3, 2, -1]})
    assert fig1.minima_classes(depths) == {4: [5], 6: [2, 3], 8: [1, 2, 3]}


def _best(rows):
    """Per-rank minima from (depth, rank_class, mse, param_norm_sq) with λ = 1e-3."""
    df = pd.DataFrame(rows, columns=["depth", "rank_class", "mse", "param_norm_sq"])
    return df.assign(objective=df["mse"] + 1e-3 * df["param_norm_sq"])


def test_crossing_predicted_from_mse_and_intercepts_and_observed_from_the_minima():
    # rank 2: ‖θ‖² = 2L + 10, mse 0.002; rank 1: ‖θ‖² = L + 12, mse 0.02 → L* = 18 + 12 − 10 = 20
    rows = [(d, 2, 0.002, 2 * d + 10) for d in (8, 12, 16, 22, 24)] + [(d, 1, 0.02, d + 12) for d in (12, 16, 22, 24)]
    (c,) = fig1.crossings(_best(rows), 1e-3)
    assert c["ranks"] == [1, 2] and c["depths"] == [12, 16, 22, 24]
    assert c["r1"] == pytest.approx([12, 10]) and c["mse"] == pytest.approx([0.02, 0.002])
    assert c["predicted"] == pytest.approx(20.0)
    assert c["observed"] == [16, 22]  # rank 2 lower up to 16, rank 1 from 22
    never = fig1.crossings(_best([r for r in rows if r[1] == 2] + [(d, 1, 0.2, d + 12) for d in (12, 16)]), 1e-3)
    assert never[0]["observed"] is None


def test_minima_depth_table_reads_the_lowest_objective_class():
    best = _best([(8, 2, 0.002, 26.0), (8, 3, 0.001, 30.0), (10, 2, 0.003, 30.0)])
    depths = pd.DataFrame({"depth": [8, 10, 12], "rank": [3, 2, 2], "ranks": [[3, 3], [2, 2], [2, 2]]})
    table = fig1.minima_depth_table(best, depths)
    assert table["rank"].tolist() == [2, 2, -1]  # 0.028 < 0.031 at depth 8; no minimum at 12
    assert table["fitted"].tolist() == [True, True, False]


def test_lowest_minima_keep_the_winning_class_of_each_depth_for_the_slope_check():
    """The slope check fits a class only where it wins: rank 3's minima at 12, 14 (losing to rank 2,
    far below slope 3) do not enter its fit; rank 2 wins at 10, 12, 14 with slope exactly 2."""
    rows = [(10, 3, 0.0, 36.0), (10, 2, 0.02, 33.0), (12, 3, 0.001, 37.0), (12, 2, 0.0, 37.0),
            (14, 3, 0.005, 38.0), (14, 2, 0.0, 41.0)]
    best = _best(rows)
    low = fig1.lowest_minima(best)
    assert low[["depth", "rank_class"]].values.tolist() == [[10, 3], [12, 2], [14, 2]]
    fits = fig1.fit_rank_classes(low.assign(rank=low["rank_class"], diverged=False)).set_index("rank")
    assert fits.loc[2, "n_depths"] == 2 and abs(fits.loc[2, "slope"] - 2.0) < 1e-9
    assert fig1.lowest_minima(best.iloc[:0]).empty
