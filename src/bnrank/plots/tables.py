"""rich tables of an analysis for the terminal (`bnrank analyze` prints them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table

LAYER_COLUMNS = {
    "member": "m", "layer": "ℓ", "shape": "shape", "frob_sq": "‖W‖²", "top_sv": "s₁ s₂ s₃ of W",
    "rank": "rank", "near_one": "≈1", "act_rank": "act", "nonlin_impact": "nonlin", "balance_error": "bal",
    "budget": "budget",
}
NETWORK_COLUMNS = {
    "member": "m", "depth": "L", "param_norm_sq": "‖θ‖²", "jac_rank": "Jrank", "r1_lower_bound": "R1≥",
    "budget_lhs": "budget", "budget_rhs": "≤ rhs", "schatten_max": "Schatten", "ntk_top": "NTK/N",
    "hessian_top": "Hess", "mse": "mse",
}


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.3g}"
    return str(value)


def layer_table(layers: pd.DataFrame, top: int = 3, title: str = "layers") -> Table:
    """One row per (member, layer): shape, ‖W_ℓ‖², the `top` largest singular values, ranks, impact, balance, budget."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for key, name in LAYER_COLUMNS.items():
        table.add_column(name, justify="left" if key == "top_sv" else "right", no_wrap=True, min_width=max(len(name), 4))
    for row in layers.itertuples():
        sv = " ".join(f"{s:.2g}" for s in row.singular_values[:top]) + (" …" if len(row.singular_values) > top else "")
        cells = {**row._asdict(), "shape": f"{row.fan_out}×{row.fan_in}", "top_sv": sv}
        table.add_row(*[_fmt(cells[c]) for c in LAYER_COLUMNS])
    return table


def network_table(network: pd.DataFrame, title: str = "networks") -> Table:
    """One row per member: ‖θ‖², Jacobian rank, R⁽¹⁾ bound, both sides of the budget, curvature, mse."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in NETWORK_COLUMNS.values():
        table.add_column(name, justify="right", no_wrap=True, min_width=max(len(name), 4))
    for row in network.itertuples():
        cells = row._asdict()
        table.add_row(*[_fmt(cells[c]) for c in NETWORK_COLUMNS])
    return table
