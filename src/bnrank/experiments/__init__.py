"""Reproductions of the papers' figures, one module per figure.

Each experiment module defines ``PRESETS`` (names, e.g. "quick" and "paper") and
``run(preset: str, out: Path, progress: bool | None, **options) -> dict`` which writes its figures,
tables and ``summary.json`` under `out` and returns the summary. `EXPERIMENTS` maps the name used
by ``bnrank reproduce NAME`` to the module path; modules are imported on use.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Collection, Mapping
from types import ModuleType
from typing import Any

from bnrank.errors import ConfigError

EXPERIMENTS: dict[str, str] = {}
EXPERIMENTS["fig2"] = "bnrank.experiments.fig2"
EXPERIMENTS["fig1"] = "bnrank.experiments.fig1"
EXPERIMENTS["iclr-rank"] = "bnrank.experiments.iclr_rank"
EXPERIMENTS["compositional-scaling"] = "bnrank.experiments.compositional"
EXPERIMENTS["leaky-resnet"] = "bnrank.experiments.leaky_resnet"
EXPERIMENTS["saddle-to-saddle"] = "bnrank.experiments.saddle_to_saddle"
EXPERIMENTS["l2-linear"] = "bnrank.experiments.l2_linear"
EXPERIMENTS["mixed-regime"] = "bnrank.experiments.mixed_regime"


def get_experiment(name: str) -> ModuleType:
    """The module of experiment `name`; an unknown name raises ConfigError listing the known ones."""
    if name not in EXPERIMENTS:
        known = ", ".join(sorted(EXPERIMENTS)) or "none yet"
        raise ConfigError(f"unknown experiment {name!r} (known: {known})")
    return importlib.import_module(EXPERIMENTS[name])


def resolve_preset(experiment: str, presets: Mapping[str, Any], name: str, options: Mapping[str, Any],
                   hidden: Collection[str] = ()) -> Any:
    """Preset `name` (a dataclass) of `experiment` with `options` replacing its fields; an unknown
    preset or field raises ConfigError (hidden presets are left out of the list of known ones)."""
    if name not in presets:
        known = ", ".join(p for p in presets if p not in hidden)
        raise ConfigError(f"unknown preset {name!r} for {experiment} (known: {known})")
    try:
        return dataclasses.replace(presets[name], **options)
    except TypeError as err:
        raise ConfigError(f"{experiment}: {err}") from None
