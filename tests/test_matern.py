"""The Matérn composition task (bnrank.tasks.matern), the kernel ridge baseline
(bnrank.measure.kernel_ridge) and the power-law fit (bnrank.measure.scaling)."""

import math

import numpy as np
import pytest
import scipy.special
import torch
import yaml

from conftest import cli, one_line_error, tiny_config

from bnrank.config import MAX_GP_POINTS, MaternCompositionTask, RunConfig, validate
from bnrank.errors import ConfigError, DataError
from bnrank.measure.kernel_ridge import fit_kernel_ridge, median_distance, select_lambda
from bnrank.measure.scaling import fit_power_law, fit_power_laws
from bnrank.tasks import make_task
from bnrank.tasks.matern import gp_draw, matern, matern_closed_form, matern_general, matern_matrix, sample_matern_composition

R = np.concatenate([[0.0, 1e-12, 1e-6], np.linspace(0.01, 8.0, 200), [30.0, 700.0]])

HAND = {  # the textbook forms, written out with a = r/ℓ
    0.5: lambda a: np.exp(-a),
    1.5: lambda a: (1 + math.sqrt(3) * a) * np.exp(-math.sqrt(3) * a),
    2.5: lambda a: (1 + math.sqrt(5) * a + 5 * a**2 / 3) * np.exp(-math.sqrt(5) * a),
}


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
@pytest.mark.parametrize("ell", [0.3, 1.0, 4.0])
def test_closed_forms_and_the_bessel_form_agree_with_the_textbook_formulas(nu, ell):
    """rtol 1e-12: exp(−s) at s ≈ 200 turns the argument's last-bit rounding into ≈ 200 ulp."""
    want = HAND[nu](R / ell)
    np.testing.assert_allclose(matern_closed_form(R, nu, ell), want, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(matern_general(R, nu, ell), want, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(matern(R, nu, ell), matern_closed_form(R, nu, ell))


@pytest.mark.parametrize("nu", [0.3, 0.8, 3.7, 12.0])
def test_the_bessel_form_is_the_definition_and_continuous_in_nu(nu):
    r = np.linspace(0.05, 5.0, 50)
    s = math.sqrt(2 * nu) * r / 1.7
    direct = 2 ** (1 - nu) / scipy.special.gamma(nu) * s**nu * scipy.special.kv(nu, s)
    np.testing.assert_allclose(matern_general(r, nu, 1.7), direct, rtol=1e-12)
    assert matern_general(np.array([0.0]), nu)[0] == 1.0
    near = [1.5, 2.5][nu > 2]
    assert np.abs(matern_general(r, near * (1 + 1e-9)) - matern_closed_form(r, near)).max() < 1e-7


def test_large_nu_is_smooth_across_the_bessel_overflow_and_near_the_gaussian_kernel():
    """At ν = 50, K_ν(s) overflows below s ≈ 3e-5, where the small-s series takes over: the two
    agree on both sides to 1e-12 (the log form's terms of size ≈ 700 cancel to ≈ 1, so its error
    is a few hundred ulp); and k_50 is within 1 % of e^{−r²/2ℓ²}."""
    nu = 50.0
    s = np.geomspace(1e-6, 1e-3, 400)
    r = s / math.sqrt(2 * nu)
    series = 1 - s**2 / (4 * (nu - 1)) + s**4 / (32 * (nu - 1) * (nu - 2))
    np.testing.assert_allclose(matern_general(r, nu), series, rtol=0, atol=1e-12)
    r = np.linspace(0, 3, 31)
    assert np.abs(matern_general(r, nu) - np.exp(-(r**2) / 2)).max() < 1e-2
    with pytest.raises(ValueError, match="nu must be in"):
        matern_general(r, 51.0)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5, 0.8, 4.0])
def test_kernel_matrices_are_symmetric_positive_definite(nu):
    x = np.random.default_rng(1).normal(size=(80, 3))
    k = matern_matrix(x, x, nu, 1.2)
    np.testing.assert_array_equal(k, k.T)
    np.testing.assert_array_equal(np.diag(k), np.ones(80))
    assert np.linalg.eigvalsh(k).min() > 1e-10


def test_kernel_matrix_in_row_blocks_equals_the_unblocked_one(monkeypatch):
    import bnrank.tasks.matern as mod

    x, y = np.random.default_rng(2).normal(size=(23, 4)), np.random.default_rng(3).normal(size=(9, 4))
    full = matern_matrix(x, y, 1.5, 2.0)
    monkeypatch.setattr(mod, "_BLOCK_ENTRIES", 5 * 9)  # blocks of 5 rows
    np.testing.assert_array_equal(matern_matrix(x, y, 1.5, 2.0), full)
    r = np.linalg.norm(x[:, None] - y[None], axis=2)
    np.testing.assert_allclose(full, HAND[1.5](r / 2.0), rtol=1e-13)


@pytest.mark.parametrize("nu", [0.5, 2.5, 1.2])
def test_gp_draws_over_many_seeds_have_the_kernel_as_covariance(nu):
    """M = 4000 draws (one per seed) at 5 points: each entry of the empirical covariance
    (1/M) Σ f fᵀ has standard deviation √((K_ii K_jj + K_ij²)/M) ≤ 0.022 about K_ij; the test
    allows 4.5 of them entrywise, and the mean must be within 4.5/√M of 0."""
    points = np.array([[0.0, 0.0], [0.3, 0.0], [1.0, 0.5], [-1.0, 2.0], [0.2, 0.1]])
    kernel = matern_matrix(points, points, nu, 1.0)
    m = 4000
    draws = np.concatenate([gp_draw(points, nu, 1.0, 1, torch.Generator().manual_seed(s))[0] for s in range(m)], axis=1)
    emp = draws @ draws.T / m
    sd = np.sqrt((np.outer(np.diag(kernel), np.diag(kernel)) + kernel**2) / m)
    assert (np.abs(emp - kernel) < 4.5 * sd).all(), np.abs(emp - kernel) / sd
    assert (np.abs(draws.mean(1)) < 4.5 / math.sqrt(m)).all()


def test_coordinates_of_one_draw_are_independent_with_the_kernel_covariance():
    points = np.random.default_rng(4).normal(size=(4, 3))
    kernel = matern_matrix(points, points, 1.5, 1.5)
    f, jitter = gp_draw(points, 1.5, 1.5, 6000, torch.Generator().manual_seed(0))
    assert f.shape == (4, 6000) and jitter == 1e-8
    emp = f @ f.T / 6000
    sd = np.sqrt((np.outer(np.diag(kernel), np.diag(kernel)) + kernel**2) / 6000)
    assert (np.abs(emp - kernel) < 4.5 * sd).all()


def test_jitter_grows_where_the_kernel_is_numerically_singular():
    points = np.zeros((30, 2))  # one point 30 times: K = all ones, singular
    f, jitter = gp_draw(points, 2.5, 1.0, 2, torch.Generator().manual_seed(0), jitter=1e-20)
    assert 1e-20 < jitter <= 1e-4
    assert np.allclose(f, f[0], atol=0.1)  # the same value up to the nugget


def test_task_is_deterministic_in_its_seed_with_the_right_shapes_and_metadata():
    cfg = MaternCompositionTask(d_in=6, rank=2, d_out=4, n_train=120, n_test=30, nu_g=1.5, nu_h=0.5, seed=5)
    task = make_task(cfg)
    assert task.x_train.shape == (120, 6) and task.x_test.shape == (30, 6)
    assert task.y_train.shape == (120, 4) and task.y_test.shape == (30, 4)
    assert task.x_train.dtype == torch.float64 and task.y_train.dtype == torch.float64
    assert task.metadata["true_rank"] == 2 and task.metadata["nu_g"] == 1.5 and task.metadata["nu_h"] == 0.5
    assert task.metadata["kind"] == "matern-composition"
    torch.testing.assert_close(task.y_train.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(task.y_train.std(0), torch.ones(4, dtype=torch.float64), atol=1e-12, rtol=0)
    again = make_task(cfg)
    assert torch.equal(again.x_train, task.x_train) and torch.equal(again.y_test, task.y_test)
    other = make_task(cfg.model_copy(update={"seed": 6}))
    assert not torch.allclose(other.y_train, task.y_train)
    noisy = make_task(cfg.model_copy(update={"noise": 0.1}))
    assert torch.equal(noisy.x_train, task.x_train)
    assert 0.05 < float((noisy.y_train - task.y_train).std()) < 0.15


def test_the_run_config_builds_the_task_by_kind_and_sphere_inputs_have_norm_sqrt_d_in():
    run = validate(RunConfig, {"task": {"kind": "matern-composition", "inputs": "sphere", "n_train": 50, "n_test": 10}})
    assert isinstance(run.task, MaternCompositionTask)
    task = make_task(run.task)
    torch.testing.assert_close(task.x_train.norm(dim=1), torch.full((50,), math.sqrt(15), dtype=torch.float64))
    assert task.y_train.shape == (50, 20) and task.metadata["true_rank"] == 3


def test_y_is_the_gp_h_evaluated_at_g_of_x():
    """The raw draw reproduces from its parts: g from x's kernel, then h from g(x)'s kernel,
    both with the generator's stream in order (x, Z_g, Z_h)."""
    cfg = MaternCompositionTask(d_in=4, rank=2, d_out=3, n_train=40, n_test=0, seed=2)
    x, g, y, _ = sample_matern_composition(cfg)
    gen = torch.Generator().manual_seed(2)
    torch.randn(40, 4, generator=gen, dtype=torch.float64)
    g2, _ = gp_draw(x.numpy(), cfg.nu_g, 2.0, 2, gen)
    y2, _ = gp_draw(g2, cfg.nu_h, math.sqrt(2), 3, gen)
    np.testing.assert_array_equal(g.numpy(), g2)
    np.testing.assert_array_equal(y.numpy(), y2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nu_g": 0}, "nu_g must be > 0 and <= 50"),
        ({"nu_h": -0.5}, "nu_h must be > 0 and <= 50"),
        ({"nu_h": 60}, "nu_h must be > 0 and <= 50"),
        ({"rank": 16}, "rank (k = 16) must be <= d_in (15)"),
        ({"n_train": MAX_GP_POINTS, "n_test": 1}, f"exceeds {MAX_GP_POINTS}, the most points an exact GP draw takes"),
        ({"jitter": 0.1}, "task.jitter"),
    ],
)
def test_bad_task_configs_are_one_clear_config_error(fields, message):
    with pytest.raises(ConfigError) as err:
        validate(RunConfig, {"task": {"kind": "matern-composition", **fields}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_task_on_the_cli_is_one_error_line_exit_2_and_nothing_written(tmp_path):
    cfg = tiny_config(task={"kind": "matern-composition", "n_train": 20000, "n_test": 500})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, stderr = cli("train", path, "--out", tmp_path / "run", "-q")
    one_line_error(code, stderr, "the most points an exact GP draw takes")
    assert not (tmp_path / "run").exists()


def _laplace(a, b, ell):
    return np.exp(-np.linalg.norm(a[:, None] - b[None], axis=2) / ell)


def test_kernel_ridge_equals_a_direct_dense_solve():
    rng = np.random.default_rng(0)
    x, y, xt = rng.normal(size=(60, 3)), rng.normal(size=(60, 2)), rng.normal(size=(15, 3))
    lam, ell = 1e-3, 1.7
    model = fit_kernel_ridge(torch.from_numpy(x), torch.from_numpy(y), lam, nu=0.5, length_scale=ell)
    alpha = np.linalg.solve(_laplace(x, x, ell) + 60 * lam * np.eye(60), y)
    np.testing.assert_allclose(model.alpha, alpha, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.predict(xt), _laplace(xt, x, ell) @ alpha, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.error(xt, np.zeros((15, 2))), np.mean(np.sum((_laplace(xt, x, ell) @ alpha) ** 2, 1)), rtol=1e-10)
    tiny = fit_kernel_ridge(x, y, 1e-12, nu=2.5, length_scale=ell)  # ≈ interpolation
    np.testing.assert_allclose(tiny.predict(x), y, atol=1e-6)
    assert fit_kernel_ridge(x, y, lam).length_scale == median_distance(x)


def test_lambda_selection_scores_each_lambda_like_a_separate_fit_and_refits_the_best():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 2))
    y = np.sin(2 * x[:, :1]) + 0.3 * rng.normal(size=(100, 1))
    lams = [1e-1, 1e-5, 1e-3, 1e-2, 1e-4]
    sel = select_lambda(x, y, lams, nu=1.5, length_scale=1.0, val_fraction=0.25, seed=3)
    np.testing.assert_array_equal(sel.lams, np.sort(lams))
    perm = np.random.default_rng(3).permutation(100)
    fit, val = perm[:75], perm[75:]
    direct = [fit_kernel_ridge(x[fit], y[fit], lam, 1.5, 1.0).error(x[val], y[val]) for lam in sel.lams]
    np.testing.assert_allclose(sel.val_errors, direct, rtol=1e-8)
    assert sel.lam == sel.lams[int(np.argmin(direct))]
    refit = fit_kernel_ridge(x, y, sel.lam, 1.5, 1.0)
    np.testing.assert_allclose(sel.model.alpha, refit.alpha, rtol=1e-12, atol=1e-14)
    assert 1e-5 < sel.lam  # the noise is not interpolated


def test_kernel_ridge_bad_input_is_a_data_error():
    x = np.zeros((5, 2))
    with pytest.raises(DataError, match="5 rows but y has 4"):
        fit_kernel_ridge(np.ones((5, 2)), np.ones((4, 1)), 0.1)
    with pytest.raises(DataError, match="median pairwise distance"):
        fit_kernel_ridge(x, np.ones((5, 1)), 0.1)
    with pytest.raises(DataError, match="lams"):
        select_lambda(np.eye(5), np.ones((5, 1)), [0.0, 1.0])


def test_power_law_fit_is_exact_on_noise_free_data():
    n = np.array([100, 200, 400, 800, 1600, 3200], dtype=float)
    fit = fit_power_law(np.repeat(n, 2), np.repeat(0.7 * n**-0.83, 2))
    assert fit.b == pytest.approx(-0.83, abs=1e-12) and fit.a == pytest.approx(math.log(0.7), abs=1e-11)
    assert fit.b_stderr < 1e-12 and fit.points == 12
    np.testing.assert_allclose(fit.predict(n), 0.7 * n**-0.83, rtol=1e-11)


def test_power_law_fit_with_noise_is_within_two_standard_errors_at_the_nominal_rate():
    """log err = a + b log N + N(0, 0.2²), 8 sizes × 3 seeds, 2000 replicates: |b̂ − b| < 2 se
    holds in ≈ 94 % of them (the t distribution with 22 degrees of freedom: 94.2 %), and the
    standard errors match the spread of b̂."""
    rng = np.random.default_rng(0)
    n = np.repeat(np.geomspace(100, 10_000, 8), 3)
    fits = [fit_power_law(n, np.exp(1.0 - 0.6 * np.log(n) + 0.2 * rng.normal(size=n.size))) for _ in range(2000)]
    b = np.array([f.b for f in fits])
    se = np.array([f.b_stderr for f in fits])
    covered = np.mean(np.abs(b + 0.6) < 2 * se)
    assert 0.925 < covered < 0.96
    assert abs(np.sqrt(np.mean(se**2)) / b.std() - 1) < 0.06
    assert abs(fits[0].b + 0.6) < 2 * fits[0].b_stderr


def test_power_laws_per_group_and_bad_input():
    import pandas as pd

    n = np.array([10.0, 20.0, 40.0, 80.0])
    frame = pd.DataFrame(
        {"method": ["deep"] * 4 + ["krr"] * 4, "n": np.concatenate([n, n]), "test_error": np.concatenate([n**-1.0, 2 * n**-0.5])}
    )
    fits = fit_power_laws(frame, ["method"])
    assert list(fits["method"]) == ["deep", "krr"]
    np.testing.assert_allclose(fits["b"], [-1.0, -0.5], atol=1e-12)
    with pytest.raises(DataError, match="at least 3 points"):
        fit_power_law([10.0, 10.0, 10.0], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="finite and > 0"):
        fit_power_law([10.0, 20.0, 30.0], [1.0, 0.0, 3.0])
