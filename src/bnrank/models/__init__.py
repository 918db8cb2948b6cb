"""Ensembles of fully connected ReLU networks with stacked parameters."""

from bnrank.models.ensemble import EnsembleMLP

__all__ = ["EnsembleMLP"]
