"""The model families by `model.kind`, and building an ensemble from a run's model config."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bnrank.errors import ModelError
from bnrank.models.ensemble import EnsembleMLP
from bnrank.models.family import EnsembleModel
from bnrank.models.leaky_resnet import EnsembleLeakyResNet

FAMILIES: dict[str, type[EnsembleModel]] = {EnsembleMLP.kind: EnsembleMLP, EnsembleLeakyResNet.kind: EnsembleLeakyResNet}
"""Every model family, by the `kind` of its config (bnrank.config.MODEL_CONFIGS)."""


def family(kind: str) -> type[EnsembleModel]:
    """The family registered as `kind`; an unknown kind raises ModelError listing the known ones."""
    if kind not in FAMILIES:
        raise ModelError(f"unknown model family {kind!r} (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[kind]


def build_model(config, d_in: int, d_out: int, seeds: Sequence[int], init_scale: Sequence[float],
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> EnsembleModel:
    """An initialised ensemble of the family `config.kind`, one member per seed."""
    return family(config.kind).from_config(config, d_in, d_out, list(seeds), list(init_scale), dtype, device)
