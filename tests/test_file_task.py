"""Task kind `file` and arrays given to bnrank.train: formats, hashes, standardization, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli, one_line_error
from safetensors.numpy import save_file

import bnrank
from bnrank import ConfigError, DataError, StoreError
from bnrank.config import RunConfig, validate
from bnrank.tasks.file import data_sha256, read_data_file

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 3))
Y = np.c_[2 * X[:, :1], np.abs(X[:, 1:2])]
X_TEST, Y_TEST = X[:5] + 1, Y[:5] - 1
EMPTY = (np.empty((0, 3)), np.empty((0, 2)))
TINY = {"model": {"depth": 3, "width": 6}, "train": {"log_every": 5, "phases": [{"steps": 10, "lr": 0.01}]}}


def _write(path, x, y):
    """Write x, y in the format of `path`'s extension, columns a, b, c (inputs), t1, t2 (targets)."""
    table = pd.DataFrame(np.c_[x, y], columns=["a", "b", "c", "t1", "t2"])
    suffix = path.suffix
    if suffix == ".npz":
        np.savez(path, x=x, y=y)
    elif suffix == ".safetensors":
        save_file({"x": np.ascontiguousarray(x), "y": np.ascontiguousarray(y)}, str(path))
    elif suffix == ".npy":
        np.save(path, np.c_[x, y])
    elif suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path)
    return path


NAMES = {".npz": {}, ".safetensors": {}, ".npy": {"targets": [3, 4]}, ".csv": {"targets": ["t1", "t2"]},
         ".parquet": {"targets": ["t1", "t2"], "inputs": ["a", "b", "c"]}}


def _task(tmp_path, suffix, **extra):
    train = _write(tmp_path / f"train{suffix}", X, Y)
    test = _write(tmp_path / f"test{suffix}", X_TEST, Y_TEST)
    return {"kind": "file", "train": str(train), "test": str(test), **NAMES[suffix], **extra}


@pytest.mark.parametrize("suffix", list(NAMES))
def test_each_format_round_trips_with_one_content_hash(tmp_path, suffix):
    cfg = validate(RunConfig, {"task": _task(tmp_path, suffix)})
    assert cfg.task.sha256 == data_sha256(X, Y, X_TEST, Y_TEST)
    task = bnrank.make_task(cfg.task)
    for got, want in zip((task.x_train, task.y_train, task.x_test, task.y_test), (X, Y, X_TEST, Y_TEST)):
        assert got.dtype == torch.float64
        np.testing.assert_array_equal(got.numpy(), want)
    assert task.metadata["sha256"] == cfg.task.sha256 and task.metadata["standardize"] == "none"


def test_columns_default_to_the_non_targets_and_names_pick_columns(tmp_path):
    path = _write(tmp_path / "d.csv", X, Y)
    x, y = read_data_file(path, targets=["t2"])
    np.testing.assert_array_equal(x, np.c_[X, Y[:, :1]])
    np.testing.assert_array_equal(y, Y[:, 1:])
    x, y = read_data_file(path, inputs=["c", "a"], targets=["t1"])
    np.testing.assert_array_equal(x, X[:, [2, 0]])
    x, y = read_data_file(_write(tmp_path / "d.npy", X, Y), targets=[-1])
    np.testing.assert_array_equal(y, Y[:, 1:])


def test_standardization_uses_training_statistics_and_is_recorded(tmp_path):
    cfg = validate(RunConfig, {"task": _task(tmp_path, ".npz", standardize="both")})
    task = bnrank.make_task(cfg.task)
    mean, std = X.mean(0), X.std(0, ddof=1)
    np.testing.assert_allclose(task.x_train.numpy(), (X - mean) / std, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(task.x_test.numpy(), (X_TEST - mean) / std, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(task.metadata["target_std"], Y.std(0, ddof=1), rtol=1e-14)
    assert task.metadata["input_mean"] == mean.tolist()
    assert cfg.task.sha256 == data_sha256(X, Y, X_TEST, Y_TEST)  # the hash is of the raw data


def test_a_run_records_the_hash_and_loads_without_the_file(tmp_path):
    task = _task(tmp_path, ".csv", standardize="targets")
    run = bnrank.train({**TINY, "task": task}, out=tmp_path / "run", progress=False)
    assert run.summary["task"]["target_mean"] == Y.mean(0).tolist()
    (tmp_path / "train.csv").unlink()
    back = bnrank.load_run(tmp_path / "run")
    assert back.config.task.sha256 == data_sha256(X, Y, X_TEST, Y_TEST)
    torch.testing.assert_close(back.task.y_train, run.task.y_train, rtol=0, atol=0)


def test_a_changed_file_is_refused(tmp_path):
    cfg = validate(RunConfig, {"task": _task(tmp_path, ".npz")})
    _write(tmp_path / "train.npz", X, Y + 1)
    with pytest.raises(DataError, match="the data changed since the config was resolved"):
        bnrank.make_task(cfg.task)
    fresh = validate(RunConfig, {"task": {"kind": "file", "train": str(tmp_path / "train.npz"), "test": cfg.task.test}})
    assert fresh.task.sha256 == data_sha256(X, Y + 1, X_TEST, Y_TEST)


def test_arrays_given_to_train_record_the_same_hash_as_a_file(tmp_path):
    run = bnrank.train({**TINY, "task": {"kind": "file", "standardize": "inputs"}}, x=torch.tensor(X), y=Y,
                       x_test=X_TEST, y_test=Y_TEST, progress=False)
    assert run.config.task.sha256 == data_sha256(X, Y, X_TEST, Y_TEST) and run.config.task.train is None
    assert run.config.task.standardize == "inputs" and run.summary["task"]["input_std"] == X.std(0, ddof=1).tolist()
    saved = bnrank.train(TINY, x=X, y=Y, out=tmp_path / "run", progress=False)
    assert saved.task.x_test.shape == (0, 3)
    assert bnrank.load_run(tmp_path / "run").config.task == saved.config.task
    with pytest.raises(DataError, match="train data: y is integer-typed"):
        bnrank.train(TINY, x=X, y=np.ones((24, 1), dtype=np.int64), progress=False)
    with pytest.raises(DataError, match="x has 24 rows but y has 23"):
        bnrank.train(TINY, x=X, y=Y[:-1], progress=False)
    with pytest.raises(DataError, match="x_test and y_test together"):
        bnrank.train(TINY, x=X, y=Y, x_test=X_TEST, progress=False)
    with pytest.raises(ConfigError, match="x and y replace the config's task"):
        bnrank.train({**TINY, "task": {"kind": "composition"}}, x=X, y=Y, progress=False)
    with pytest.raises(DataError, match="pass x and y to bnrank.train"):
        bnrank.make_task(run.config.task)


def _bad_files(tmp):
    """(file, extra CLI args, message) for each kind of bad input."""
    empty = tmp / "empty.csv"
    empty.write_bytes(b"")
    text = tmp / "text.npz"
    text.write_text("a,b\n1,2\n")
    fake = tmp / "fake.parquet"
    fake.write_text("not parquet")
    np.savez(tmp / "rows.npz", x=X, y=Y[:-1])
    np.savez(tmp / "nan.npz", x=np.where(np.arange(3) == 1, np.nan, X), y=Y)
    np.savez(tmp / "inf.npz", x=X, y=np.where(np.arange(2) == 0, np.inf, Y))
    np.savez(tmp / "int.npz", x=X, y=(Y > 0).astype(np.int64))
    np.savez(tmp / "complex.npz", x=X + 1j, y=Y)
    pd.DataFrame({"a": X[:, 0], "t": Y[:, 0]}).to_csv(tmp / "cols.csv", index=False)
    np.save(tmp / "three.npy", np.zeros((2, 2, 2)))
    (tmp / "data.txt").write_text("1 2")
    return [
        (empty, [], "empty file"),
        (text, [], "not a valid .npz file"),
        (fake, ["--targets", "t"], "not a valid .parquet file"),
        (tmp / "rows.npz", [], "x has 24 rows but y has 23"),
        (tmp / "nan.npz", [], "array 'x' contains NaN or inf (first at row 0, column 1)"),
        (tmp / "inf.npz", [], "array 'y' contains NaN or inf"),
        (tmp / "int.npz", [], "array 'y' is integer-typed (int64)"),
        (tmp / "complex.npz", [], "complex numbers"),
        (tmp / "cols.csv", ["--targets", "t,u"], "no column 'u'"),
        (tmp / "cols.csv", [], "name the target columns"),
        (tmp / "cols.csv", ["--targets", "t", "--inputs", "a,t"], "column 't' is both an input and a target"),
        (tmp / "three.npy", ["--targets", "0"], "expected a 2-d array"),
        (tmp / "data.txt", [], "unknown data format '.txt'"),
        (tmp / "missing.npz", [], "no such file"),
    ]


def test_bad_data_files_are_one_line_exit_2_and_nothing_written(tmp_path):
    for path, args, message in _bad_files(tmp_path):
        out = tmp_path / "run"
        code, _, err = cli("train", "--data", path, *args, "--out", out, "-q")
        one_line_error(code, err, message)
        assert str(path) in err and not out.exists()


def test_cli_train_with_data_and_test_data(tmp_path):
    train, test = _write(tmp_path / "tr.csv", X, Y), _write(tmp_path / "te.csv", X_TEST, Y_TEST)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {depth: 3, width: 6}\ntrain: {log_every: 5, phases: [{steps: 10}]}\n"
                   "task: {kind: file, train: elsewhere.csv, standardize: inputs}\n")
    code, out, err = cli("train", cfg, "--data", train, "--test-data", test, "--targets", "t1,t2", "--inputs", "a,b,c",
                         "--out", tmp_path / "run", "-q")
    assert code == 0, err
    assert bnrank.load_run(tmp_path / "run").config.task.standardize == "inputs"  # kept from the config
    code, out, err = cli("train", cfg, "--data", train, "--test-data", test, "--targets", "t1,t2", "--inputs", "a,b,c",
                         "--set", "task.standardize=both", "--out", tmp_path / "run", "--overwrite", "-q")
    assert code == 0, err
    run = bnrank.load_run(tmp_path / "run")
    assert run.config.task.sha256 == data_sha256(X, Y, X_TEST, Y_TEST) and run.task.x_test.shape == (5, 3)
    assert run.config.task.standardize == "both" and run.model.dims == [3, 6, 6, 2]
    code, _, err = cli("train", cfg, "--targets", "t1")
    one_line_error(code, err, "--test-data, --inputs and --targets go with --data")


def test_a_sweep_over_a_file_task_resumes_and_refuses_changed_data(tmp_path):
    data = _write(tmp_path / "d.npz", X, Y)
    spec = {"name": "file", "base": {**TINY, "task": {"kind": "file", "train": str(data)}},
            "grid": {"train.lam": [0.001, 0.01]}, "trials": 1, "analyze": False}
    first = bnrank.run_sweep(spec, tmp_path / "sweep", progress=False)
    assert first.complete and set(first.runs.n_train) == {24}
    parts = sorted((tmp_path / "sweep").rglob("*.safetensors"))
    again = bnrank.run_sweep(spec, tmp_path / "sweep", progress=False)
    assert sorted((tmp_path / "sweep").rglob("*.safetensors")) == parts  # nothing retrained
    pd.testing.assert_frame_equal(first.runs, again.runs)
    _write(data, X, Y * 2)
    with pytest.raises(StoreError, match="task.sha256"):
        bnrank.run_sweep(spec, tmp_path / "sweep", progress=False)


def test_cli_train_with_data_alone_takes_the_defaults_and_their_keys(tmp_path):
    data = _write(tmp_path / "d.npz", X, Y)
    code, _, err = cli("train", "--data", data, "--set", "train.phases.0.steps=5", "--set", "model.width=4",
                       "--set", "task.n_train=12", "--out", tmp_path / "run", "-q")
    assert code == 0, err
    run = bnrank.load_run(tmp_path / "run")
    assert run.summary["steps"] == 5 and run.model.dims[1] == 4 and run.task.x_train.shape == (12, 3)


def test_cli_train_needs_a_config_or_data():
    code, _, err = cli("train")
    one_line_error(code, err, "pass a run config, or a data file with --data")


def test_cli_analyze_a_run_on_a_data_file(tmp_path):
    run = bnrank.train(TINY, x=X, y=Y, out=tmp_path / "run", progress=False)
    data = _write(tmp_path / "d.csv", X[:7], Y[:7])
    code, _, err = cli("analyze", tmp_path / "run", "--data", data, "--targets", "t1,t2", "--out", tmp_path / "a")
    assert code == 0, err
    network = pd.read_parquet(tmp_path / "a" / "network.parquet")
    want = bnrank.analyze(run.model, X[:7], Y=Y[:7], lam=run.config.train.lam).network
    pd.testing.assert_frame_equal(network, want)
    code, _, err = cli("analyze", tmp_path / "run", "--targets", "t1")
    one_line_error(code, err, "--inputs and --targets go with --data")


def test_a_sweep_over_several_files_takes_each_files_hash(tmp_path):
    a, b = _write(tmp_path / "a.npz", X, Y), _write(tmp_path / "b.npz", X, 2 * Y)
    spec = {"name": "files", "base": {**TINY, "task": {"kind": "file", "train": str(a)}}, "analyze": False,
            "cases": [{"task.train": str(path), "task.sha256": None} for path in (a, b)]}
    cells = bnrank.sweep.expand(bnrank.sweep.load_spec(spec))
    assert [c.config.task.sha256 for c in cells] == [data_sha256(X, Y, *EMPTY), data_sha256(X, 2 * Y, *EMPTY)]


def test_n_train_and_n_test_take_the_first_rows_and_the_hash_is_of_them(tmp_path):
    cfg = validate(RunConfig, {"task": _task(tmp_path, ".parquet", n_train=10, n_test=50)})
    task = bnrank.make_task(cfg.task)
    np.testing.assert_array_equal(task.x_train.numpy(), X[:10])
    np.testing.assert_array_equal(task.y_test.numpy(), Y_TEST)  # the test file has only 5 rows
    assert cfg.task.sha256 == data_sha256(X[:10], Y[:10], X_TEST, Y_TEST)
    assert (task.metadata["n_train"], task.metadata["n_test"]) == (10, 5)
    run = bnrank.train({**TINY, "task": {"kind": "file", "n_train": 7}}, x=X, y=Y, progress=False)
    assert run.task.x_train.shape == (7, 3) and run.config.task.sha256 == data_sha256(X[:7], Y[:7], *EMPTY)
    with pytest.raises(ConfigError, match="task.n_train: Input should be greater than 0"):
        validate(RunConfig, {"task": _task(tmp_path, ".npz", n_train=0)})
