"""Ensemble checkpoints as safetensors: ``weight.{ℓ}`` (E, d_ℓ, d_{ℓ-1}) and ``bias.{ℓ}`` (E, d_ℓ),
ℓ = 1..L, with the depth in the file's metadata."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bnrank.atomic import write_with
from bnrank.errors import StoreError
from bnrank.models import EnsembleMLP


def save_checkpoint(model: EnsembleMLP, path: str | Path) -> Path:
    tensors = {}
    for i, (w, b) in enumerate(zip(model.weights, model.biases), start=1):
        tensors[f"weight.{i}"] = w.detach().cpu().contiguous()
        tensors[f"bias.{i}"] = b.detach().cpu().contiguous()
    meta = {"format": "bnrank.ensemble", "depth": str(model.depth), "members": str(model.members)}
    return write_with(path, lambda p: save_file(tensors, str(p), metadata=meta))


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str = "cpu") -> EnsembleMLP:
    """Read a checkpoint written by `save_checkpoint`; a missing or corrupt file raises StoreError."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path), device=device)
        depth = max(int(k.split(".")[1]) for k in tensors if k.startswith("weight."))
        weights = [tensors[f"weight.{i}"] for i in range(1, depth + 1)]
        biases = [tensors[f"bias.{i}"] for i in range(1, depth + 1)]
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise StoreError(f"corrupt or foreign checkpoint {path}: {err}") from None
    if dtype is not None:
        weights, biases = [w.to(dtype) for w in weights], [b.to(dtype) for b in biases]
    return EnsembleMLP(weights, biases)
