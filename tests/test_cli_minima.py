import pandas as pd
import pytest
import yaml

from conftest import cli, one_line_error, tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("minima")
    cfg = tiny_config(train={"lam": 0.01, "log_every": 10, "phases": [
        {"optimizer": "adam", "steps": 30, "lr": 0.01}, {"optimizer": "gd", "steps": 20, "lr": 0.01}]})
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = cli("train", root / "c.yaml", "--out", root / "run", "-q")
    assert code == 0, err
    return root


def test_minima_writes_one_row_per_start_and_marks_the_best(run_dir):
    code, out, err = cli("minima", run_dir / "run", "--ranks", "1", "2", "--out", run_dir / "m", "--no-certify")
    assert code == 0, err
    rows = pd.read_parquet(run_dir / "m" / "minima.parquet")
    assert set(rows["rank_class"]) <= {1, 2} and set(rows["start"]) <= {"trained", "truncated"}
    assert rows["source"].str.startswith("member ").all() and (rows["depth"] == 3).all()
    kept = rows[~rows["left_class"] & ~rows["diverged"]]
    assert rows["best"].sum() == kept.groupby("rank_class").ngroups
    for k, group in kept.groupby("rank_class"):
        assert group.loc[group["best"], "objective"].item() == group["objective"].min()
    assert "per-rank minima" in out


@pytest.mark.parametrize("args, message", [
    (["--ranks", "one"], "--ranks takes integers"),
    (["--ranks", "-1"], "ranks >= 0"),
])
def test_bad_ranks_are_one_line_and_exit_code_2(run_dir, args, message):
    code, _, err = cli("minima", run_dir / "run", *args, "--out", run_dir / "bad")
    one_line_error(code, err, message)
    assert not (run_dir / "bad").exists()


def test_a_directory_that_is_neither_a_run_nor_a_sweep_is_one_line(tmp_path):
    code, _, err = cli("minima", tmp_path, "--ranks", "1", "--out", tmp_path / "m")
    one_line_error(code, err, "neither a run directory nor a sweep directory")


def test_a_run_without_descent_phases_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config()))
    assert cli("train", tmp_path / "c.yaml", "--out", tmp_path / "run", "-q")[0] == 0
    code, _, err = cli("minima", tmp_path / "run", "--ranks", "1", "--out", tmp_path / "m")
    one_line_error(code, err, "phases after the first")
    assert not (tmp_path / "m").exists()
