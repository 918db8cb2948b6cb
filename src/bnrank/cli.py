"""The `bnrank` command line: train (and, as they land, analyze, sweep, reproduce).

Bad input of any kind (config, data, files, models) prints one line ``error: ...`` on stderr and
exits with code 2; nothing half-written is left behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from bnrank.errors import BnrankError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Bottleneck structure of deep L2-regularized networks.")
err_console = Console(stderr=True)
console = Console()

SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key: key.sub=value (repeatable).")]


@app.callback()
def _root() -> None:
    """bnrank: train L2-regularized deep networks and measure their bottleneck structure."""


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    set_: SetOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory to write (default runs/<config name>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train an ensemble and write a run directory (config, metrics, checkpoint, summary)."""
    from bnrank.runs import train as train_run

    out = out or Path("runs") / config.stem
    try:
        run = train_run(config, out=out, overwrite=overwrite, progress=False if quiet else None, overrides=set_ or [])
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
def reproduce(
    experiment: Annotated[str, typer.Argument(help="Which figure: see `bnrank.experiments.EXPERIMENTS`.")],
    preset: Annotated[str, typer.Option(help="Size preset, e.g. quick or paper.")] = "quick",
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default out/<experiment>-<preset>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Reproduce a figure of the papers: figures (PNG, SVG), tables (Parquet) and summary.json."""
    from bnrank.experiments import get_experiment

    out = out or Path("out") / f"{experiment}-{preset}"
    try:
        module = get_experiment(experiment)
        if preset not in module.PRESETS:
            _fail(f"unknown preset {preset!r} for {experiment} (known: {', '.join(module.PRESETS)})")
        module.run(preset, out, progress=False if quiet else None)
    except BnrankError as err:
        _fail(str(err))


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML): base config, grid, seeds or trials.")],
    out: Annotated[Optional[Path], typer.Option(help="Sweep directory (default sweeps/<spec file name>); rerunning resumes it.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes; torch threads are split between them.")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads per worker (default: cores / workers).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a spec field (trials=4), a grid entry (grid.model.depth=[4,8]) or a base config key (train.lam=0.01); repeatable.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run (or resume) a sweep: cells of one shape train as one ensemble; tables go to Parquet."""
    from bnrank.sweep import run_sweep

    out = out or Path("sweeps") / spec.stem
    try:
        result = run_sweep(spec, out, workers=workers, threads=threads, progress=False if quiet else None, overrides=set_ or [])
    except BnrankError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        err_console.print(f"interrupted: finished groups are kept in {out}; rerun the same command to resume", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    runs = result.runs
    console.print(
        f"sweep {result.spec.name}: {len(runs)}/{len(result.cells)} cells in {out} "
        f"({int(runs.diverged.sum()) if len(runs) else 0} diverged)", highlight=False,
    )


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="Run directory, or a checkpoint (.safetensors) with --data or --task.")],
    data: Annotated[Optional[Path], typer.Option(help="Inputs X (N, d_in) as a .npy file.")] = None,
    task: Annotated[Optional[Path], typer.Option(help="Run config (YAML) whose task gives X, Y and whose train.lam gives λ.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default RUN_DIR/analysis or CHECKPOINT-analysis).")] = None,
    threshold: Annotated[float, typer.Option(min=0, help="Rank threshold on singular values (relative for activations).")] = 0.1,
    curvature: Annotated[bool, typer.Option(help="Also compute the top NTK and Hessian eigenvalues (Lanczos; slow for large nets).")] = False,
) -> None:
    """Measure a trained ensemble: layers/points/network Parquet tables and a weight-spectra figure."""
    import numpy as np

    from bnrank.atomic import write_with
    from bnrank.config import load_run_config
    from bnrank.errors import DataError
    from bnrank.measure import analyze as run_analysis
    from bnrank.plots import layer_table, network_table, plot_weight_spectra
    from bnrank.tasks import make_task

    if data is not None and task is not None:
        _fail("pass at most one of --data and --task")
    if path.is_file() and data is None and task is None:
        _fail(f"{path} is a checkpoint: pass its inputs with --data X.npy or --task CONFIG")
    out = out or (path / "analysis" if path.is_dir() else path.with_name(f"{path.stem}-analysis"))
    try:
        x = y = lam = None
        if data is not None:
            try:
                x = np.load(data, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read --data {data}: {err}") from None
        elif task is not None:
            cfg = load_run_config(task)
            task_data = make_task(cfg.task)
            x, y, lam = task_data.x_train, task_data.y_train, cfg.train.lam
        result = run_analysis(path, x, threshold=threshold, Y=y, lam=lam, curvature=curvature)
        result.to_parquet(out)
        fig = plot_weight_spectra(result.layers, threshold, title=f"Weight spectra of {path.name}")
        for fmt in ("png", "svg"):
            write_with(out / f"weight_spectra.{fmt}", lambda p, fmt=fmt: fig.savefig(p, format=fmt, dpi=150))
    except BnrankError as err:
        _fail(str(err))
    console.print(layer_table(result.layers, title=f"layers of {path}"))
    console.print(network_table(result.network, title=f"networks of {path}"))
    console.print(f"wrote layers/points/network.parquet and weight_spectra.png/.svg to {out}", highlight=False)


def main() -> None:
    try:
        app()
    except BnrankError as err:  # anything that escaped a command's own handling
        err_console.print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
