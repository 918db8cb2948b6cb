"""What every reproduction shares: figures as PNG + SVG, Parquet tables and summary.json (each
file atomically), the PASS/FAIL lines of its checks, and torch's thread count for a block."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console

from bnrank.atomic import write_json, write_parquet, write_with

FIGURE_FORMATS = ("png", "svg")
FIGURE_DPI = 150


def save_figures(directory: Path, figures: Mapping[str, object]) -> list[Path]:
    """Write every matplotlib Figure as ``NAME.png`` and ``NAME.svg`` in `directory`."""
    paths = []
    for name, fig in figures.items():
        for ext in FIGURE_FORMATS:
            paths.append(write_with(directory / f"{name}.{ext}",
                                    lambda p, fig=fig, ext=ext: fig.savefig(p, format=ext, dpi=FIGURE_DPI)))
    return paths


def write_outputs(directory: Path, summary: dict, figures: Mapping[str, object] = {},
                  tables: Mapping[str, pd.DataFrame] = {}) -> None:
    """Figures (PNG + SVG), tables (``NAME.parquet``) and ``summary.json`` into `directory`."""
    save_figures(directory, figures)
    for name, table in tables.items():
        write_parquet(directory / f"{name}.parquet", table)
    write_json(directory / "summary.json", summary)


def print_checks(console: Console, checks: Mapping[str, bool] | Iterable[tuple[str, bool]]) -> None:
    """One ``PASS``/``FAIL`` line per check (a name → held mapping, or (text, held) pairs)."""
    for text, held in (checks.items() if isinstance(checks, Mapping) else checks):
        console.print(f"  {'PASS' if held else 'FAIL'}  {text}")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's thread count to `n` (None or 0: unchanged) for the block, then restore it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
