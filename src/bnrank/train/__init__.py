"""Training ensembles to the regularized minimum: objective, optimizers, phases, stopping."""

from bnrank.train.objective import mse, objective
from bnrank.train.rebalance import balance_error, rebalance_
from bnrank.train.trainer import TrainResult, fit

__all__ = ["mse", "objective", "balance_error", "rebalance_", "TrainResult", "fit"]
