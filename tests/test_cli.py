import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config


from typer.testing import CliRunner

from bnrank.cli import app


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def bnrank_cli(*args):
    """Run the CLI in-process (fast); `test_console_script_exit_code` covers the real entry point."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return Result(res.exit_code, res.stdout, res.stderr)


def test_train_command_writes_a_run(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    res = bnrank_cli("train", cfg, "--out", tmp_path / "run", "--set", "train.lam=0.02", "-q")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "summary.json").is_file()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["lam"] == 0.02


@pytest.mark.parametrize(
    "content, overrides, message",
    [
        ("model: {widht: 3}\n", [], "model.widht: unknown key"),
        ("model: {depth: [1,\n", [], "not valid YAML"),
        (None, ["--set", "train.lam=-0.5"], "train.lam"),
        (None, ["--set", "model.width=0"], "model.width"),
        (None, ["--set", "nokeyvalue"], "key=value"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, content, overrides, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content if content is not None else yaml.safe_dump(tiny_config()))
    res = bnrank_cli("train", cfg, "--out", tmp_path / "run", "-q", *overrides)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_exit_code_2(tmp_path):
    res = bnrank_cli("train", tmp_path / "nope.yaml", "--out", tmp_path / "run")
    assert res.returncode == 2 and "cannot read config" in res.stderr


def test_console_script_exit_code(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {lam: -1}\n")
    res = subprocess.run([sys.executable, "-m", "bnrank.cli", "train", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_a_worker_that_failed_for_good_is_one_line_and_exit_code_1(tmp_path, monkeypatch):
    from bnrank.errors import WorkerError
    from bnrank.sweep import LocalExecutor

    def crash(self, groups):
        raise WorkerError("a Ray task failed for good (WorkerCrashedError: worker died)")
        yield

    monkeypatch.setattr(LocalExecutor, "map", crash)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"base": {k: v for k, v in tiny_config().items() if k != "members"}, "analyze": False}))
    res = bnrank_cli("sweep", spec, "--out", tmp_path / "sw", "-q")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "WorkerCrashedError" in lines[0] and "rerun to resume" in lines[0]


@pytest.mark.parametrize("started, message", [(True, "finished groups are kept in"), (False, "nothing new was written to")])
def test_sweep_interrupted_says_what_is_kept_and_exits_130(tmp_path, monkeypatch, started, message):
    import bnrank.sweep

    def interrupted(spec, out, **kwargs):
        if started:
            out.mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(bnrank.sweep, "run_sweep", interrupted)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": tiny_config(), "seeds": [0]}))
    res = bnrank_cli("sweep", spec, "--out", tmp_path / "sw", "-q")
    assert res.returncode == 130
    assert res.stderr.strip().startswith(f"interrupted: {message}") and "rerun the same command" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
