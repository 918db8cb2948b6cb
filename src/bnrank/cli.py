"""The `bnrank` command line: train, analyze, sweep, reproduce.

Bad input of any kind (config, data, files, models, options) prints one line ``error: ...`` on
stderr and exits with code 2; a worker of a sweep that failed for good, one line and code 1;
Ctrl-C, one line saying what is kept and code 130. Nothing half-written is left behind.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bnrank.errors import BnrankError, ConfigError, WorkerError

err_console = Console(stderr=True)
console = Console()


#: click's UsageError and NoArgsIsHelpError (a bare `bnrank` shows the help), from the click
#: typer runs on: its own copy in recent typer versions, the click package in older ones.
_UsageError = typer.BadParameter.__bases__[0]
_NoArgsIsHelp = getattr(sys.modules[_UsageError.__module__], "NoArgsIsHelpError", ())


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """A usage error (unknown option, bad option value, missing argument) as one `error:` line, code 2."""
    try:
        yield
    except _NoArgsIsHelp:
        raise
    except _UsageError as err:
        where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
        message = " ".join(err.format_message().replace("Value error, ", "").split())
        err_console.print(f"error: {message}{where}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(2) from None


class _Commands(typer.core.TyperGroup):
    """bnrank's command group: usage errors are one line (`_one_line_usage_errors`)."""

    def make_context(self, *args, **kwargs):
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  help="Bottleneck structure of deep L2-regularized networks.")

SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key: key.sub=value (repeatable).")]
DeviceOption = Annotated[Optional[Literal["cpu", "cuda", "auto"]], typer.Option(help="Train on cpu, cuda or auto (cuda when torch sees a GPU); sets the config's device.")]
DtypeOption = Annotated[Optional[Literal["float32", "float64"]], typer.Option(help="Training precision; sets the config's dtype.")]
ExecutorOption = Annotated[Literal["local", "ray"], typer.Option(help="Where sweep groups run: local processes, or tasks on a Ray cluster (pip install 'bnrank\\[ray]').")]
AddressOption = Annotated[Optional[str], typer.Option(help="Ray cluster: auto (the one this node joined with `ray start`) or HOST:PORT of its head; default $RAY_ADDRESS, else a new local Ray instance.")]
RayCpusOption = Annotated[Optional[float], typer.Option("--ray-num-cpus", help="CPUs each Ray task (one ensemble group) reserves, also its torch threads (default 1).")]
RayGpusOption = Annotated[Optional[float], typer.Option("--ray-num-gpus", help="GPUs each Ray task reserves; a fraction packs groups onto a GPU, 0.25: four (default 0).")]
RayRetriesOption = Annotated[Optional[int], typer.Option("--ray-max-retries", help="Times Ray reruns a task whose worker process died (default 3).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
MaxMemoryOption = Annotated[Optional[str], typer.Option(help="Most memory the work may take, e.g. 8G, 512MB, 2GiB (default: what the machine has available); checked against an estimate before anything starts.")]

RAY_WORKERS = "--workers is for --executor local (Ray runs as many groups at once as the cluster has room for)"


@app.callback()
def _root() -> None:
    """bnrank: train L2-regularized deep networks and measure their bottleneck structure."""


def _worker_failed(err: WorkerError) -> None:
    """One line for a worker that failed for good; exit code 1 (a failure, not bad input)."""
    err_console.print(f"error: {err}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(1)


def _interrupted(sweep: Path, out: Path) -> None:
    """One line on Ctrl-C saying what is kept (the finished groups of `sweep`, if it was started,
    else nothing new in `out`); exit code 130."""
    kept = (f"finished groups are kept in {sweep}; rerun the same command to resume" if sweep.is_dir()
            else f"nothing new was written to {out}; rerun the same command to start again")
    err_console.print(f"interrupted: {kept}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(130)


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _device_overrides(device: str | None, dtype: str | None) -> list[str]:
    """--device / --dtype as config overrides (device=..., dtype=...)."""
    return [f"{key}={value}" for key, value in (("device", device), ("dtype", dtype)) if value is not None]


def _max_memory(text: str | None) -> int | None:
    from bnrank.memory import parse_size

    return None if text is None else parse_size(text)


@dataclass
class SweepOptions:
    """The options `reproduce` and `sweep` share (`sweep_options` adds them to a command)."""

    device: str | None
    dtype: str | None
    executor: str
    address: str | None
    ray_num_cpus: float | None
    ray_num_gpus: float | None
    ray_max_retries: int | None
    quiet: bool

    def overrides(self) -> list[str]:
        return _device_overrides(self.device, self.dtype)

    def runner(self, threads: int | None = None):
        """The sweep executor the options name: a RayExecutor, or None for the local default.
        Ray options without --executor ray raise ConfigError."""
        given = {"--address": self.address, "--ray-num-cpus": self.ray_num_cpus, "--ray-num-gpus": self.ray_num_gpus,
                 "--ray-max-retries": self.ray_max_retries}
        if self.executor == "local":
            stray = [name for name, value in given.items() if value is not None]
            if stray:
                raise ConfigError(f"{stray[0]} is for --executor ray")
            return None
        from bnrank.sweep.ray_executor import RayExecutor

        settings = {"num_cpus": self.ray_num_cpus, "num_gpus": self.ray_num_gpus, "max_retries": self.ray_max_retries}
        return RayExecutor(self.address, threads=threads, **{k: v for k, v in settings.items() if v is not None})


_SWEEP_OPTIONS = {
    "device": (DeviceOption, None), "dtype": (DtypeOption, None), "executor": (ExecutorOption, "local"),
    "address": (AddressOption, None), "ray_num_cpus": (RayCpusOption, None), "ray_num_gpus": (RayGpusOption, None),
    "ray_max_retries": (RayRetriesOption, None), "quiet": (QuietOption, False),
}


def sweep_options(command: Callable) -> Callable:
    """Give `command` the options of `SweepOptions` (declared once, in `_SWEEP_OPTIONS`); it
    receives them as one argument `opts`."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "opts"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
              for name, (annotation, default) in _SWEEP_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = SweepOptions(**{name: kwargs.pop(name) for name in _SWEEP_OPTIONS})
        return command(**kwargs, opts=opts)

    wrapper.__signature__ = signature.replace(parameters=[*own, *shared])
    return wrapper


def _columns(value: str | None) -> list[str] | None:
    """A comma-separated --inputs / --targets list."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


InputsOption = Annotated[Optional[str], typer.Option(help="Input columns (.csv/.parquet), column indices (.npy) or array names (.npz/.safetensors, default x), comma-separated.")]
TargetsOption = Annotated[Optional[str], typer.Option(help="Target columns, column indices or array names (default y for .npz/.safetensors), comma-separated.")]


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="Run config (YAML); optional with --data.")] = None,
    set_: SetOption = None,
    data: Annotated[Optional[Path], typer.Option(help="Train on this data file (.npy, .npz, .csv, .parquet, .safetensors): replaces the config's task.")] = None,
    test_data: Annotated[Optional[Path], typer.Option(help="Test data file, same format and names as --data.")] = None,
    inputs: InputsOption = None,
    targets: TargetsOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory to write (default runs/<config or data file name>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    max_memory: MaxMemoryOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train an ensemble and write a run directory (config, metrics, checkpoint, summary).

    With --data the task is your data file (task kind `file`; --set task.standardize=both
    standardizes it, as does a config's file task), and the config gives the model and training
    (defaults without one).
    """
    from bnrank.config import read_yaml
    from bnrank.runs import train as train_run
    from bnrank.tasks.file import with_data_files

    if config is None and data is None:
        _fail("pass a run config, or a data file with --data")
    if data is None and (test_data is not None or inputs is not None or targets is not None):
        _fail("--test-data, --inputs and --targets go with --data")
    out = out or Path("runs") / (config or data).stem
    overrides = (set_ or []) + _device_overrides(device, dtype)
    try:
        source = config
        if data is not None:
            base = read_yaml(config) if config is not None else None
            source = with_data_files(base, data, test_data, _columns(inputs), _columns(targets), source=str(config))
        run = train_run(source, out=out, overwrite=overwrite, progress=False if quiet else None, overrides=overrides,
                        max_memory=_max_memory(max_memory))
    except BnrankError as err:
        _fail(str(err))
    table = Table(title=f"run {out}  ({run.summary['steps']} steps, {run.summary['wall_time_s']:.1f} s)")
    columns = {"member": "member", "lam": "λ", "objective": "objective", "mse": "mse", "test_mse": "test mse",
               "param_norm_sq": "‖θ‖²", "balance_error": "balance", "diverged": "diverged", "converged": "converged"}
    for title in columns.values():
        table.add_column(title, justify="right")
    for m in run.summary["members"]:
        table.add_row(*[f"{m[c]:.4g}" if isinstance(m[c], float) else str(m[c]) for c in columns])
    console.print(table)


@app.command()
@sweep_options
def reproduce(
    experiment: Annotated[str, typer.Argument(help="Which figure: see `bnrank.experiments.EXPERIMENTS`.")],
    preset: Annotated[str, typer.Option(help="Size preset, e.g. quick or paper.")] = "quick",
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default out/<experiment>-<preset>).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Local worker processes for the experiment's sweep (default: the preset's).")] = None,
    *,
    opts: SweepOptions,
) -> None:
    """Reproduce a figure of the papers: figures (PNG, SVG), tables (Parquet) and summary.json.

    --device/--dtype reach the experiment as run-config overrides (its run's `overrides`),
    --executor ray as a Ray executor for its sweeps (its run's `executor`) and --workers as its
    run's `workers`, where it takes them.
    """
    from bnrank.atomic import check_writable
    from bnrank.experiments import get_experiment
    from bnrank.runs import resolve_device

    out = out or Path("out") / f"{experiment}-{preset}"
    try:
        module = get_experiment(experiment)
        if opts.executor == "ray" and workers is not None:
            raise ConfigError(RAY_WORKERS)
        options = {"overrides": opts.overrides(), "executor": opts.runner(), "workers": workers}
        options = {name: value for name, value in options.items() if value}
        accepted = inspect.signature(module.run).parameters
        flags = {"overrides": "--device/--dtype", "executor": "--executor ray", "workers": "--workers"}
        for name in options:
            if name not in accepted:
                _fail(f"experiment {experiment} does not take {flags[name]}")
        if opts.device is not None and "executor" not in options:
            resolve_device(opts.device)  # here, before anything runs: cuda without a GPU fails at once
        check_writable(out)
        module.run(preset, out, progress=False if opts.quiet else None, **options)
    except WorkerError as err:
        _worker_failed(err)
    except BnrankError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted(out / "sweep", out)


@app.command()
@sweep_options
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML): base config, grid, seeds or trials.")],
    out: Annotated[Optional[Path], typer.Option(help="Sweep directory (default sweeps/<spec file name>); rerunning resumes it.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes; torch threads are split between them.")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads per worker (default: cores / workers).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a spec field (trials=4), a grid entry (grid.model.depth=[4,8]) or a base config key (train.lam=0.01); repeatable.")] = None,
    extend: Annotated[bool, typer.Option(help="Let a spec that differs from the one --out holds replace it, when its cells include every finished cell there (more seeds, more grid values).")] = False,
    max_memory: MaxMemoryOption = None,
    *,
    opts: SweepOptions,
) -> None:
    """Run (or resume) a sweep: cells of one shape train as one ensemble; tables go to Parquet.

    With --executor ray every group is a task on a Ray cluster; the directory is the same, so a
    sweep started with one executor resumes with the other. One driver at a time writes a
    directory: a second one on the same --out is refused.
    """
    from bnrank.sweep import run_sweep

    out = out or Path("sweeps") / spec.stem
    overrides = (set_ or []) + opts.overrides()
    try:
        if opts.executor == "ray" and workers != 1:
            raise ConfigError(RAY_WORKERS)
        result = run_sweep(spec, out, workers=workers, threads=threads, progress=False if opts.quiet else None,
                           overrides=overrides, executor=opts.runner(threads), extend=extend,
                           max_memory=_max_memory(max_memory))
    except WorkerError as err:
        _worker_failed(err)
    except BnrankError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted(out, out)
    runs = result.runs
    console.print(
        f"sweep {result.spec.name}: {len(runs)}/{len(result.cells)} cells in {out} "
        f"({int(runs.diverged.sum()) if len(runs) else 0} diverged)", highlight=False,
    )


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="Run directory, or a model file with --data or --task: a bnrank checkpoint or a state dict of Linear layers (.safetensors, or .pt saved with torch.save).")],
    data: Annotated[Optional[Path], typer.Option(help="Data file (.npy, .npz, .csv, .parquet, .safetensors): inputs X, and targets Y where it names them.")] = None,
    inputs: InputsOption = None,
    targets: TargetsOption = None,
    task: Annotated[Optional[Path], typer.Option(help="Run config (YAML) whose task gives X, Y and whose train.lam and train.mse_reduction give the objective.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default RUN_DIR/analysis or CHECKPOINT-analysis).")] = None,
    threshold: Annotated[float, typer.Option(min=0, help="Rank threshold on singular values (relative for activations).")] = 0.1,
    curvature: Annotated[bool, typer.Option(help="Also compute the top NTK and Hessian eigenvalues (Lanczos; slow for large nets).")] = False,
    device: Annotated[Literal["cpu", "cuda", "auto"], typer.Option(help="Compute on cpu, cuda or auto (cuda when torch sees a GPU); always in float64.")] = "cpu",
    max_memory: MaxMemoryOption = None,
) -> None:
    """Measure a trained ensemble: layers/points/network Parquet tables and a weight-spectra figure.

    Members whose parameters hold NaN or inf are listed as diverged in the network table and not
    measured. The files are written together: all of them, or none when anything fails.
    """
    from bnrank.atomic import check_writable, staged_dir
    from bnrank.config import load_run_config
    from bnrank.measure import analyze as run_analysis
    from bnrank.plots import layer_table, network_table, plot_weight_spectra
    from bnrank.runs import resolve_device
    from bnrank.tasks import make_task
    from bnrank.tasks.file import read_data_file

    if data is not None and task is not None:
        _fail("pass at most one of --data and --task")
    if data is None and (inputs is not None or targets is not None):
        _fail("--inputs and --targets go with --data")
    if path.is_file() and data is None and task is None:
        _fail(f"{path} is a model file: pass its inputs with --data FILE or --task CONFIG")
    out = out or (path / "analysis" if path.is_dir() else path.with_name(f"{path.stem}-analysis"))
    try:
        limit = _max_memory(max_memory)
        check_writable(out)
        on = resolve_device(device)
        x = y = lam = reduction = None
        if data is not None:
            x, y = read_data_file(data, _columns(inputs), _columns(targets), need_targets=False)
        elif task is not None:
            cfg = load_run_config(task)
            task_data = make_task(cfg.task)
            x, y, lam, reduction = task_data.x_train, task_data.y_train, cfg.train.lam, cfg.train.mse_reduction
        result = run_analysis(path, x, threshold=threshold, Y=y, lam=lam, curvature=curvature, mse_reduction=reduction,
                              device=on, max_memory=limit)
        fig = plot_weight_spectra(result.layers, threshold, title=f"Weight spectra of {path.name}")
        with staged_dir(out, merge=True) as stage:
            result.to_parquet(stage)
            for fmt in ("png", "svg"):
                fig.savefig(stage / f"weight_spectra.{fmt}", format=fmt, dpi=150)
    except BnrankError as err:
        _fail(str(err))
    console.print(layer_table(result.layers, title=f"layers of {path}"))
    console.print(network_table(result.network, title=f"networks of {path}"))
    diverged = result.network.member[result.network.diverged].tolist()
    if diverged:
        console.print(f"members {diverged} have NaN or inf parameters: listed as diverged, not measured", highlight=False)
    console.print(f"wrote layers/points/network.parquet and weight_spectra.png/.svg to {out}", highlight=False)


@app.command()
def minima(
    path: Annotated[Path, typer.Argument(help="Run directory or sweep directory of trained ReLU MLPs (one task, one λ).")],
    ranks: Annotated[str, typer.Option(help="Rank classes to seek minima in: --ranks 1 2 3 (or 1,2,3).")],
    more_ranks: Annotated[Optional[list[str]], typer.Argument(hidden=True)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory for minima.parquet (default PATH/minima).")] = None,
    steps_factor: Annotated[float, typer.Option(min=0.001, help="Multiplies the descent phases of the train config for the finishes.")] = 1.0,
    certify: Annotated[bool, typer.Option(help="Certify every finished start (Lanczos on the Hessian; slow for deep nets).")] = True,
) -> None:
    """Per-rank minima: the best minimum found in each rank class at each depth.

    Start points per rank class from the trained networks (as trained, middle weight truncated
    to rank k, or a shallower network extended by identity layers), finished by the descent
    phases of the train config, as one ensemble per depth (bnrank.measure.rank_minima). Writes
    minima.parquet (one row per start, `best` marks each class's minimum) and prints the minima.
    """
    from bnrank.atomic import check_writable, write_parquet
    from bnrank.measure.rank_minima import load_problem, mark_best, rank_minima

    words = [ranks] + (more_ranks or [])
    try:
        classes = sorted({int(w) for word in words for w in word.replace(",", " ").split()})
    except ValueError:
        _fail(f"--ranks takes integers, got {' '.join(words)!r}")
    out = out or path / "minima"
    try:
        problem = load_problem(path)
        check_writable(out / "minima.parquet")
        rows = mark_best(rank_minima(problem, classes, steps_factor, certify))
        write_parquet(out / "minima.parquet", rows)
    except BnrankError as err:
        _fail(str(err))
    table = Table(title=f"per-rank minima of {path}: the best finished start of each rank class (* = lowest at its depth)")
    for name in ("L", "rank class", "start", "source", "objective", "‖θ‖²", "mse", "verdict"):
        table.add_column(name, justify="right")
    best = rows[rows["best"]]
    lowest = set(best.groupby("depth")["objective"].idxmin()) if len(best) else set()
    for i, r in best.iterrows():
        verdict = r["cert_verdict"] if "cert_verdict" in best and r["cert_verdict"] else "–"
        table.add_row(str(r["depth"]), str(r["rank_class"]), r["start"], str(r["source"]),
                      f"{r['objective']:.5g}{'*' if i in lowest else ''}", f"{r['param_norm_sq']:.4g}", f"{r['mse']:.3g}", verdict)
    console.print(table)
    left = int(rows["left_class"].sum())
    console.print(f"{len(rows)} starts, {left} left their class, {int(rows['diverged'].sum())} diverged; wrote {out / 'minima.parquet'}",
                  highlight=False)


def main() -> None:
    try:
        app()
    except BnrankError as err:  # anything that escaped a command's own handling
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(1 if isinstance(err, WorkerError) else 2)


if __name__ == "__main__":
    main()
