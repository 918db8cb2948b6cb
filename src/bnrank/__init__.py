"""bnrank: the bottleneck structure of deep L2-regularized networks.

Public API:
    train(config, out=None)      train an ensemble from a run config, optionally save a run dir
    train(config, x=, y=)        ... on your own arrays (or a config task of kind `file`)
    load_run(path)               read a run directory back (model, config, task, metrics)
    EnsembleMLP                  E stacked ReLU MLPs; to_sequential / from_sequential
    fit(model, x, y, train_cfg)  the trainer on your own data
    RunConfig, load_run_config   validated configs
    analyze(model, X)            every quantity of the theory: layers / points / network DataFrames
                                 (model: an EnsembleMLP, any nn.Module with Linear layers, a file)
    linear_cost, linear_expansion, fit_depth_expansion   closed forms and the depth fit
    rank_minima(load_problem(path), ranks)   per-rank minima of a run or sweep directory (one row per start)
    run_sweep(spec, out)         a grid × seeds sweep, batched into ensembles, resumable
    load_sweep(path)             a sweep directory's tables (runs, metrics, layers, points, network)
"""

__version__ = "0.1.0"

from bnrank.config import RunConfig, load_run_config
from bnrank.errors import BnrankError, ConfigError, DataError, ModelError, StoreError
from bnrank.measure import Analysis, analyze, fit_depth_expansion, linear_cost, linear_expansion
from bnrank.measure.rank_minima import best_minima, load_problem, rank_minima
from bnrank.models import EnsembleMLP
from bnrank.runs import Run, load_run, train
from bnrank.sweep import SweepResult, load_sweep, run_sweep
from bnrank.tasks import TaskData, make_task
from bnrank.training import fit

__all__ = [
    "__version__", "RunConfig", "load_run_config", "BnrankError", "ConfigError", "DataError",
    "ModelError", "StoreError", "Analysis", "analyze", "fit_depth_expansion", "linear_cost",
    "linear_expansion", "EnsembleMLP", "Run", "load_run", "train", "TaskData",
    "make_task", "fit", "run_sweep", "load_sweep", "SweepResult", "rank_minima", "load_problem", "best_minima",
]
