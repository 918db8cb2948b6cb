"""The deep-linear-network tasks: planted linear regression and masked matrix completion."""

import numpy as np
import pytest
import torch

from bnrank.config import LinearRegressionTask, MatrixCompletionTask, RunConfig, validate
from bnrank.errors import ConfigError, DataError
from bnrank.runs import train
from bnrank.tasks import TaskData, make_task
from bnrank.tasks.linear import planted_matrix


def test_linear_regression_plants_the_spectrum_and_whitens_exactly():
    cfg = LinearRegressionTask(d_in=6, d_out=5, singular_values=[1.0, 4.0, 2.0], inputs="whitened", n_train=40, n_test=7)
    task = make_task(cfg)
    a = planted_matrix(cfg)
    np.testing.assert_allclose(torch.linalg.svdvals(a)[:3], [4.0, 2.0, 1.0], rtol=1e-13)
    assert torch.linalg.matrix_rank(a) == 3 and task.metadata["true_rank"] == 3
    x = task.x_train
    torch.testing.assert_close(x.T @ x / 40, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(task.y_train, x @ a.T, rtol=0, atol=0)
    torch.testing.assert_close(task.y_test, task.x_test @ a.T, rtol=0, atol=0)
    # whitened, noiseless: the mean squared error of any matrix B is its squared distance to A*
    b = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    err = ((x @ b.T - task.y_train) ** 2).sum(1).mean()
    assert float(err) == pytest.approx(float(((b - a) ** 2).sum()), rel=1e-12)
    noisy = make_task(cfg.model_copy(update={"noise": 0.1}))
    assert 0 < float((noisy.y_train - task.y_train).std()) < 0.2 and torch.equal(noisy.y_test, task.y_test)


def test_linear_regression_refuses_spectra_that_do_not_fit():
    with pytest.raises(ConfigError, match="3 singular values do not fit a 2 x 5 matrix"):
        validate(RunConfig, {"task": {"kind": "linear-regression", "d_in": 5, "d_out": 2, "singular_values": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="whitened inputs need n_train >= d_in"):
        validate(RunConfig, {"task": {"kind": "linear-regression", "inputs": "whitened", "d_in": 10, "n_train": 5}})


def test_matrix_completion_is_masked_regression_on_one_hot_rows():
    cfg = MatrixCompletionTask(n_rows=8, n_cols=6, rank=2, observed=0.6, seed=1)
    task = make_task(cfg)
    m = task.y_test
    assert torch.linalg.matrix_rank(m) == 2 and m.shape == (8, 6)
    torch.testing.assert_close(task.x_train, torch.eye(8, dtype=torch.float64), rtol=0, atol=0)
    assert task.mask.dtype == torch.bool and task.mask.shape == (8, 6)
    assert task.metadata["n_observed"] == int(task.mask.sum())
    torch.testing.assert_close(task.y_train, torch.where(task.mask, m, 0.0), rtol=0, atol=0)
    assert torch.equal(make_task(cfg).mask, task.mask)


def test_a_mask_with_an_empty_row_or_column_is_refused_naming_it():
    with pytest.raises(DataError, match="mask: row 3 has no observed entry"):
        mask = torch.ones(5, 4, dtype=torch.bool)
        mask[3] = False
        TaskData(torch.eye(5, dtype=torch.float64), torch.zeros(5, 4, dtype=torch.float64), torch.zeros(0, 5), torch.zeros(0, 4), mask=mask)
    with pytest.raises(DataError, match="mask: column 2 has no observed entry"):
        mask = torch.ones(5, 4, dtype=torch.bool)
        mask[:, 2] = False
        TaskData(torch.eye(5, dtype=torch.float64), torch.zeros(5, 4, dtype=torch.float64), torch.zeros(0, 5), torch.zeros(0, 4), mask=mask)
    with pytest.raises(DataError, match=r"mask: (row|column) \d+ has no observed entry"):
        make_task(MatrixCompletionTask(n_rows=30, n_cols=30, observed=0.02))


def test_bnrank_train_refuses_a_masked_task_with_one_line(tmp_path):
    cfg = {"task": {"kind": "matrix-completion", "n_rows": 6, "n_cols": 6, "observed": 0.8},
           "model": {"depth": 2, "width": 4, "activation": "linear", "bias": False},
           "train": {"phases": [{"steps": 2}]}}
    with pytest.raises(DataError, match="matrix-completion observes only part of its targets"):
        train(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
