"""Training ensembles to the regularized minimum: objective, optimizers, phases, stopping."""

from bnrank.training.objective import mse, objective
from bnrank.training.rebalance import balance_error, rebalance_
from bnrank.training.trainer import TrainResult, fit

__all__ = ["mse", "objective", "balance_error", "rebalance_", "TrainResult", "fit"]
