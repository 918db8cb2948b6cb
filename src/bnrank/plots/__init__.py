"""Views of bnrank DataFrames: matplotlib Figures (no pyplot state) and rich tables."""

from bnrank.plots.spectra import plot_weight_spectra
from bnrank.plots.tables import layer_table, network_table

__all__ = ["plot_weight_spectra", "layer_table", "network_table"]
