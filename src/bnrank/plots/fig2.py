"""Panels (b) and (c) of the paper's Figure 2 (panel (a) is `plot_weight_spectra`).

Each function takes plain arrays and returns a matplotlib Figure (no pyplot state).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure


def plot_path_images(
    curves: Sequence[np.ndarray],
    background: np.ndarray | None = None,
    layer: int | None = None,
    crossings: int | None = None,
) -> Figure:
    """Images of gradient-descent paths in a 2-d projection of a hidden representation.

    curves: one (T + 1, 2) array per path, in path order (the start is marked with a circle, the
    end with an arrow head); background: (N, 2) projected training inputs drawn in light gray.
    `layer` and `crossings` only go into the title.
    """
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    if background is not None:
        ax.scatter(background[:, 0], background[:, 1], s=4, color="0.85", linewidths=0, zorder=0, label="training inputs")
    colors = [colormaps["viridis"](t) for t in np.linspace(0, 0.95, len(curves))]
    for curve, color in zip(curves, colors):
        ax.plot(curve[:, 0], curve[:, 1], "-", color=color, linewidth=1.4, marker=".", markersize=3)
        ax.plot(curve[0, 0], curve[0, 1], "o", color=color, markersize=5)
        ax.annotate("", xy=curve[-1], xytext=curve[-2], arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.2})
    ax.set_xlabel("principal direction 1")
    ax.set_ylabel("principal direction 2")
    where = f"layer {layer}" if layer is not None else "hidden representation"
    extra = f" ({crossings} crossings)" if crossings is not None else ""
    ax.set_title(f"Images of {len(curves)} GD paths, {where}{extra}")
    if background is not None:
        ax.legend(fontsize="small", loc="best")
    return fig


def plot_orbit_distance(
    distance: np.ndarray,
    extent: float,
    x0: tuple[float, float],
    layer: int | None = None,
) -> Figure:
    """Heatmap of ‖α(x₀) − α(x)‖ over a square grid on a plane orthogonal to the rotation axis.

    distance: (n, n) with distance[i, j] at plane coordinates (coords[j], coords[i]), coords =
    linspace(−extent, extent, n) (the layout of `RotationDynamics.plane_grid`); x0: the plane
    coordinates of x₀, marked in white with its orbit (the circle through x₀ about the axis)
    dashed.
    """
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(distance, origin="lower", extent=(-extent, extent, -extent, extent), cmap="magma")
    fig.colorbar(image, ax=ax, label="‖α(x₀) − α(x)‖")
    radius = float(np.hypot(*x0))
    theta = np.linspace(0, 2 * np.pi, 200)
    ax.plot(radius * np.cos(theta), radius * np.sin(theta), "--", color="white", linewidth=0.8, alpha=0.7, label="orbit of x₀")
    ax.plot(*x0, "s", color="white", markersize=6, markeredgecolor="black", label="x₀")
    ax.set_xlabel("u (plane orthogonal to the axis)")
    ax.set_ylabel("v")
    ax.set_title(f"Distance to x₀ at layer {layer}" if layer is not None else "Distance to x₀")
    ax.legend(fontsize="small", loc="upper right")
    return fig
