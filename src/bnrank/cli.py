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


def main() -> None:
    try:
        app()
    except BnrankError as err:  # anything that escaped a command's own handling
        err_console.print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
