"""Devices: --device/--dtype reach the configs, cuda without a GPU fails up front with one line,
the trainer's building blocks keep every tensor on the model's device (checked on the meta
device, which any CPU has), and CUDA runs match CPU runs (only where torch sees a GPU)."""

import json
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors import safe_open

import bnrank
import bnrank.experiments
from bnrank.errors import ConfigError
from bnrank.models import EnsembleMLP
from bnrank.runs import resolve_device
from bnrank.sweep import load_sweep, run_sweep
from bnrank.training.backprop import objective_and_grads
from bnrank.training.flat import FlatParameters
from bnrank.training.optim import GD, Adam
from bnrank.training.rebalance import balance_error, layer_balance_errors, rebalance_
from conftest import cli, one_line_error, tiny_config

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a machine without a GPU")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    return path


@pytest.fixture
def spec_path(tmp_path):
    base = tiny_config()
    del base["members"]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "d", "base": base, "grid": {"train.lam": [0.01, 0.001]}, "analyze": False}))
    return path


# -- options reach the configs ------------------------------------------------------------------


def test_train_device_and_dtype_options_set_the_run_config(tmp_path, config_path):
    code, _, stderr = cli("train", config_path, "--out", tmp_path / "run", "--device", "auto", "--dtype", "float64", "-q")
    assert code == 0, stderr
    run = bnrank.load_run(tmp_path / "run")
    assert (run.config.device, run.config.dtype) == ("auto", "float64")
    assert run.summary["device"] == str(resolve_device("auto")) and run.summary["dtype"] == "float64"
    with safe_open(str(tmp_path / "run" / "checkpoint.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float64}


def test_sweep_dtype_option_sets_every_cell(tmp_path, spec_path):
    code, _, stderr = cli("sweep", spec_path, "--out", tmp_path / "sw", "--dtype", "float64", "-q")
    assert code == 0, stderr
    result = load_sweep(tmp_path / "sw")
    assert {c.config.dtype for c in result.cells} == {"float64"} and len(result.runs) == 2
    assert result.model(result.cells[0].cell_id).weights[0].dtype == torch.float64


def test_analyze_device_option_is_accepted_and_writes_the_tables(tmp_path, config_path):
    assert cli("train", config_path, "--out", tmp_path / "run", "-q")[0] == 0
    code, stdout, stderr = cli("analyze", tmp_path / "run", "--device", "auto")
    assert code == 0, stderr
    assert (tmp_path / "run" / "analysis" / "layers.parquet").is_file()


# -- cuda without a GPU: one line, exit 2, nothing written ---------------------------------------


@no_gpu
def test_cuda_without_a_gpu_fails_train_sweep_and_analyze_up_front(tmp_path, config_path, spec_path):
    code, _, stderr = cli("train", config_path, "--out", tmp_path / "run", "--device", "cuda", "-q")
    one_line_error(code, stderr, "device: 'cuda' requested but torch sees no CUDA device")
    assert not (tmp_path / "run").exists()
    code, _, stderr = cli("sweep", spec_path, "--out", tmp_path / "sw", "--device", "cuda", "-q")
    one_line_error(code, stderr, "device: 'cuda' requested but torch sees no CUDA device")
    assert not (tmp_path / "sw").exists()
    assert cli("train", config_path, "--out", tmp_path / "cpu", "-q")[0] == 0
    code, _, stderr = cli("analyze", tmp_path / "cpu", "--device", "cuda")
    one_line_error(code, stderr, "device: 'cuda' requested but torch sees no CUDA device")
    assert not (tmp_path / "cpu" / "analysis").exists()


@no_gpu
def test_a_spec_asking_for_cuda_fails_before_the_sweep_directory_is_made(tmp_path, spec_path):
    spec = yaml.safe_load(spec_path.read_text())
    spec["base"]["device"] = "cuda"
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        run_sweep(spec, tmp_path / "sw", progress=False)
    assert not (tmp_path / "sw").exists()


# -- reproduce hands the options to experiments that take them -----------------------------------

PROBE = '''
import json
from pathlib import Path

PRESETS = {"quick": {}}


def run(preset, out, progress=None, executor=None, overrides=(), workers=None):
    Path(out).mkdir(parents=True)
    seen = {"overrides": list(overrides), "executor": type(executor).__name__,
            "num_gpus": getattr(executor, "num_gpus", None), "workers": workers}
    (Path(out) / "seen.json").write_text(json.dumps(seen))
    return seen
'''

INTERRUPTED = '''
from pathlib import Path

PRESETS = {"quick": {}}


def run(preset, out, progress=None, **options):
    if preset == "quick":
        (Path(out) / "sweep").mkdir(parents=True)
    raise KeyboardInterrupt
'''

PLAIN = '''
PRESETS = {"quick": {}}


def run(preset, out, progress=None, **options):
    raise AssertionError("must not run")
'''


@pytest.fixture
def experiments(tmp_path, monkeypatch):
    """Three experiments: `probe` takes executor and overrides, `plain` takes neither,
    `interrupted` is stopped by Ctrl-C (after starting a sweep directory in preset quick)."""
    for name, source in (("bnrank_probe_experiment", PROBE), ("bnrank_plain_experiment", PLAIN),
                         ("bnrank_interrupted_experiment", INTERRUPTED)):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(bnrank.experiments.EXPERIMENTS, "probe", "bnrank_probe_experiment")
    monkeypatch.setitem(bnrank.experiments.EXPERIMENTS, "plain", "bnrank_plain_experiment")
    monkeypatch.setitem(bnrank.experiments.EXPERIMENTS, "interrupted", "bnrank_interrupted_experiment")
    return tmp_path


def test_reproduce_passes_device_dtype_and_executor(experiments):
    out = experiments / "probe-out"
    code, _, stderr = cli("reproduce", "probe", "--out", out, "--device", "auto", "--dtype", "float64",
                          "--executor", "ray", "--ray-num-gpus", "0.5")
    assert code == 0, stderr
    seen = json.loads((out / "seen.json").read_text())
    assert seen == {"overrides": ["device=auto", "dtype=float64"], "executor": "RayExecutor", "num_gpus": 0.5,
                    "workers": None}
    code, _, stderr = cli("reproduce", "probe", "--out", experiments / "plain-options", "--workers", "3")
    assert code == 0, stderr
    seen = json.loads((experiments / "plain-options" / "seen.json").read_text())
    assert seen["overrides"] == [] and seen["workers"] == 3 and seen["executor"] == "NoneType"


@pytest.mark.parametrize("extra, message", [(["--device", "cpu"], "does not take --device/--dtype"),
                                            (["--executor", "ray"], "does not take --executor ray"),
                                            (["--workers", "2"], "does not take --workers")])
def test_reproduce_refuses_options_an_experiment_does_not_take(experiments, extra, message):
    code, _, stderr = cli("reproduce", "plain", "--out", experiments / "o", *extra)
    one_line_error(code, stderr, f"experiment plain {message}")


def test_reproduce_refuses_workers_with_ray(experiments):
    code, _, stderr = cli("reproduce", "probe", "--out", experiments / "o", "--executor", "ray", "--workers", "2")
    one_line_error(code, stderr, "--workers is for --executor local")
    assert not (experiments / "o").exists()


@pytest.mark.parametrize("preset, message", [("quick", "finished groups are kept in"),
                                             ("other", "nothing new was written to")])
def test_reproduce_interrupted_says_what_is_kept_and_exits_130(experiments, preset, message):
    code, _, stderr = cli("reproduce", "interrupted", "--preset", preset, "--out", experiments / "o")
    assert code == 130
    assert stderr.strip().startswith(f"interrupted: {message}") and "rerun the same command" in stderr
    assert len(stderr.strip().splitlines()) == 1


@no_gpu
def test_reproduce_with_cuda_and_no_gpu_fails_before_the_experiment_runs(experiments):
    code, _, stderr = cli("reproduce", "probe", "--out", experiments / "o", "--device", "cuda")
    one_line_error(code, stderr, "torch sees no CUDA device")
    assert not (experiments / "o").exists()


# -- building blocks follow the model's device (meta: shapes and devices, no data) ---------------

META = torch.device("meta")


def meta_model(depth: int = 3, members: int = 2) -> EnsembleMLP:
    return EnsembleMLP.init(members, [4] + [6] * (depth - 1) + [3], device=META)


def test_backprop_and_optimizers_stay_on_the_models_device():
    model = meta_model()
    x, y, lam = torch.empty(5, 4, device=META), torch.empty(5, 3, device=META), torch.empty(2, device=META)
    obj, mse, norm, grads = objective_and_grads(model, x, y, lam)
    assert {t.device for t in [obj, mse, norm, *grads]} == {META}
    with FlatParameters(model) as flat:
        obj, mse, norm, grads = objective_and_grads(model, x, y, lam, flat=flat)
        assert {t.device for t in [obj, mse, norm, *grads, flat.data, flat.grad]} == {META}
        lr, active = torch.empty(2, device=META), torch.ones(2, dtype=torch.bool, device=META)
        for opt in (GD(flat.data, momentum=0.9), Adam(flat.data)):
            opt.step(flat.grad, flat.per_element(lr), flat.per_element(active))
    assert {p.device for p in model.parameters()} == {META}


@pytest.mark.parametrize("depth", [1, 3])
def test_balance_measures_stay_on_the_models_device(depth):
    model = meta_model(depth)
    assert layer_balance_errors(model).device == META
    assert balance_error(model).device == META
    rebalance_(model, active=torch.ones(2, dtype=torch.bool, device=META))
    assert {p.device for p in model.parameters()} == {META}


# -- on a GPU: the same numbers as on the CPU ------------------------------------------------------


@gpu
def test_cuda_training_sweeps_and_analysis_match_the_cpu(tmp_path):
    cfg = tiny_config() | {"dtype": "float64"}
    cpu, cuda = bnrank.train(cfg, progress=False), bnrank.train(cfg | {"device": "cuda"}, progress=False)
    assert cuda.model.weights[0].is_cuda and cuda.summary["device"] == "cuda"
    for a, b in zip(cpu.model.parameters(), cuda.model.parameters()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-6, atol=1e-8)
    on_cpu = bnrank.analyze(cpu.model, cpu.task.x_train)
    on_gpu = bnrank.analyze(cpu.model, cpu.task.x_train, device="cuda")
    torch.testing.assert_close(torch.tensor(on_gpu.network.param_norm_sq.values), torch.tensor(on_cpu.network.param_norm_sq.values))
    base = tiny_config() | {"dtype": "float64"}
    del base["members"]
    spec = {"base": base, "grid": {"train.lam": [0.01, 0.001]}, "analyze": False}
    runs_cpu = run_sweep(spec, tmp_path / "cpu", progress=False).runs
    runs_gpu = run_sweep(spec, tmp_path / "gpu", progress=False, overrides=["device=cuda"]).runs
    torch.testing.assert_close(torch.tensor(runs_gpu.objective.values), torch.tensor(runs_cpu.objective.values), rtol=1e-6, atol=1e-10)


def _graph_config() -> dict:
    """Two phases (minibatch Adam with λ annealed and a cosine schedule, then heavy-ball GD),
    re-balancing, and member 1's GD step so large that it diverges mid-phase."""
    cfg = tiny_config() | {"device": "cuda", "dtype": "float64"}
    cfg["train"] = {"lam": 0.01, "log_every": 7, "rebalance_every": 9, "phases": [
        {"optimizer": "adam", "steps": 40, "lr": 0.01, "batch_size": 8, "schedule": "cosine", "lam_factor_start": 10},
        {"optimizer": "gd", "steps": 40, "lr": [0.05, 500.0], "momentum": 0.9},
    ]}
    return cfg


@gpu
def test_cuda_graph_steps_give_the_eager_steps_numbers(monkeypatch):
    graphed = bnrank.train(_graph_config(), progress=False)
    monkeypatch.setenv("BNRANK_CUDA_GRAPHS", "0")
    eager = bnrank.train(_graph_config(), progress=False)
    assert graphed.summary["members"][1]["diverged"] and not graphed.summary["members"][0]["diverged"]
    for key in ("diverged", "diverged_step", "objective", "param_norm_sq"):
        assert [m[key] for m in graphed.summary["members"]] == [m[key] for m in eager.summary["members"]], key
    for a, b in zip(graphed.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@gpu
def test_graphed_step_captures_after_the_warmup_and_replays():
    from bnrank.training.step import WARMUP, GraphedStep

    counter = torch.zeros((), device="cuda")
    step = GraphedStep(lambda: counter.add_(1), torch.device("cuda"), enabled=True)
    for _ in range(WARMUP + 5):
        step()
    assert step.graph is not None and counter.item() == WARMUP + 5
