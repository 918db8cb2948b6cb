"""`bnrank analyze`: files written for a run directory or a checkpoint, one-line errors."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_config
from typer.testing import CliRunner

import bnrank
from bnrank.cli import app


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = tiny_config()
    cfg["train"]["phases"][0]["steps"] = 50
    out = tmp_path_factory.mktemp("runs") / "tiny"
    bnrank.train(cfg, out=out, progress=False)
    return out


def test_analyze_run_dir_writes_tables_and_figures(run_dir, tmp_path):
    res = cli("analyze", run_dir, "--out", tmp_path / "a", "--curvature")
    assert res.exit_code == 0, res.stderr
    assert {p.name for p in (tmp_path / "a").iterdir()} == {
        "layers.parquet", "points.parquet", "network.parquet", "weight_spectra.png", "weight_spectra.svg",
    }
    assert (tmp_path / "a" / "weight_spectra.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "a" / "weight_spectra.svg").read_bytes()[:2000]
    layers = pd.read_parquet(tmp_path / "a" / "layers.parquet")
    expected = bnrank.analyze(run_dir).layers
    for got, want in zip(layers.singular_values, expected.singular_values):
        np.testing.assert_array_equal(got, want)
    network = pd.read_parquet(tmp_path / "a" / "network.parquet")
    assert network.hessian_top.notna().all() and network.ntk_top.notna().all()
    assert "‖θ‖²" in res.stdout and "budget" in res.stdout


def test_analyze_default_out_is_inside_the_run(run_dir):
    res = cli("analyze", run_dir, "--threshold", "0.5")
    assert res.exit_code == 0, res.stderr
    assert (run_dir / "analysis" / "network.parquet").is_file()
    assert bnrank.load_run(run_dir).config.members == 2  # the run itself still loads


def test_analyze_checkpoint_with_data_and_task(run_dir, tmp_path):
    x = bnrank.load_run(run_dir).task.x_train.numpy()[:7]
    np.save(tmp_path / "x.npy", x)
    ckpt = run_dir / "checkpoint.safetensors"
    res = cli("analyze", ckpt, "--data", tmp_path / "x.npy", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "b" / "points.parquet")) == 2 * 7
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    res = cli("analyze", ckpt, "--task", cfg, "--out", tmp_path / "c")
    assert res.exit_code == 0, res.stderr
    network = pd.read_parquet(tmp_path / "c" / "network.parquet")
    assert (network.lam == tiny_config()["train"]["lam"]).all() and network.mse.notna().all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/nowhere"], "no run directory or checkpoint"),
        (["{ckpt}"], "pass its inputs with --data"),
        (["{ckpt}", "--data", "{tmp}/bad.npy"], "X must have shape (N, 5)"),
        (["{ckpt}", "--data", "{tmp}/missing.npy"], "missing.npy: no such file"),
        (["{run}", "--data", "{tmp}/bad.npy", "--task", "{tmp}/c.yaml"], "at most one of --data and --task"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(run_dir, tmp_path, args, message):
    np.save(tmp_path / "bad.npy", np.zeros((4, 2)))
    fill = {"tmp": tmp_path, "ckpt": run_dir / "checkpoint.safetensors", "run": run_dir}
    res = cli("analyze", *[a.format(**fill) for a in args], "--out", tmp_path / "out")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_non_finite_members_are_reported_as_diverged_and_the_others_measured_as_alone(run_dir, tmp_path):
    import shutil

    import torch

    from bnrank.checkpoint import load_checkpoint, save_checkpoint

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    model = load_checkpoint(bad / "checkpoint.safetensors")
    with torch.no_grad():
        model.weights[1][0, 0, 0] = float("inf")
    save_checkpoint(model, bad / "checkpoint.safetensors")
    res = cli("analyze", bad, "--out", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert "members [0] have NaN or inf parameters" in res.stdout
    network = pd.read_parquet(tmp_path / "a" / "network.parquet")
    assert network.member.tolist() == [0, 1] and network.diverged.tolist() == [True, False]
    assert network.loc[0, ["param_norm_sq", "jac_rank", "mse"]].isna().all() and network.loc[0, "depth"] == 3
    layers = pd.read_parquet(tmp_path / "a" / "layers.parquet")
    assert set(layers.member) == {1}
    alone = bnrank.analyze(model.select([1]), bnrank.load_run(run_dir).task.x_train, Y=bnrank.load_run(run_dir).task.y_train,
                           lam=tiny_config()["train"]["lam"])
    pd.testing.assert_frame_equal(network.iloc[[1]].drop(columns="member").reset_index(drop=True),
                                  alone.network.drop(columns="member"), check_dtype=False)


def test_complex_inputs_are_refused():
    from bnrank.models import EnsembleMLP

    net = EnsembleMLP.init(1, [2, 3, 1], seeds=[0])
    with pytest.raises(bnrank.DataError, match="X holds complex numbers"):
        bnrank.analyze(net, np.ones((3, 2)) * 1j)
    with pytest.raises(bnrank.DataError, match="Y holds complex numbers"):
        bnrank.analyze(net, np.ones((3, 2)), Y=np.ones((3, 1), dtype=complex))
