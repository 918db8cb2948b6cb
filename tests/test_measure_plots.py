"""Views of an analysis: the weight-spectra figure and the terminal tables."""

import numpy as np
import pytest
import torch
from rich.console import Console

from bnrank import DataError, EnsembleMLP, analyze
from bnrank.plots import layer_table, network_table, plot_weight_spectra


@pytest.fixture(scope="module")
def result():
    net = EnsembleMLP.init(members=3, dims=[4, 6, 6, 2], dtype=torch.float64)
    with torch.no_grad():
        net.weights[1][0] = 0  # member 0's W_2 has zero singular values: not drawn on a log axis
    return analyze(net, torch.randn(10, 4, generator=torch.Generator().manual_seed(0)))


def test_weight_spectra_figure_draws_every_positive_singular_value(result):
    fig = plot_weight_spectra(result.layers, threshold=0.1)
    ax = fig.axes[0]
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    positive = sum(int(np.sum(s > 0)) for s in result.layers.singular_values)
    assert drawn == positive < sum(len(s) for s in result.layers.singular_values)
    assert ax.get_yscale() == "log" and len(ax.collections) == 3  # one color per member
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [0.1]


def test_weight_spectra_needs_the_layers_table(result):
    with pytest.raises(DataError, match="singular_values"):
        plot_weight_spectra(result.points)


def test_tables_render_one_row_per_layer_and_member(result):
    console = Console(width=120, record=True)
    console.print(layer_table(result.layers))
    console.print(network_table(result.network))
    assert layer_table(result.layers).row_count == 9 and network_table(result.network).row_count == 3
    assert "‖θ‖²" in console.export_text()
