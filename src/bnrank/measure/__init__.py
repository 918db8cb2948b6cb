"""Measurements of the bottleneck theory (docs/theory.md §2–§4) and its closed forms.

    analyze(model, X, ...) → Analysis     layers / points / network DataFrames
    linear_cost, linear_expansion         closed forms for linear networks (docs/theory.md §3)
    fit_depth_expansion(df)               ‖θ‖²(L) ≈ a·L + b (+ c/L) within each rank class
    leaky_measurements(model, X)          Leaky ResNet path: jumps, Cost of Identity, Hamiltonian

The building blocks (pure functions of weights and pre-activations, batched over members) live
in weights, activations, jacobian and curvature.
"""

from bnrank.measure.analysis import Analysis, analyze
from bnrank.measure.leaky import leaky_measurements
from bnrank.measure.theory import LinearExpansion, fit_depth_expansion, linear_cost, linear_expansion

__all__ = ["Analysis", "analyze", "LinearExpansion", "fit_depth_expansion", "linear_cost", "linear_expansion", "leaky_measurements"]
