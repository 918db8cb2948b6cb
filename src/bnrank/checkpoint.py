"""Ensemble checkpoints as safetensors: ``weight.{ℓ}`` (E, d_ℓ, d_{ℓ-1}) and ``bias.{ℓ}`` (E, d_ℓ),
ℓ = 1..L, with the depth in the file's metadata."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from bnrank.atomic import write_with
from bnrank.errors import StoreError
from bnrank.models import EnsembleMLP


def save_checkpoint(model: EnsembleMLP, path: str | Path) -> Path:
    tensors = {}
    for i, (w, b) in enumerate(zip(model.weights, model.biases), start=1):
        tensors[f"weight.{i}"] = w.detach().cpu().contiguous()
        tensors[f"bias.{i}"] = b.detach().cpu().contiguous()
    meta = {"format": "bnrank.ensemble", "depth": str(model.depth), "members": str(model.members)}
    return write_with(path, lambda p: _write(p, tensors, meta))


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write `tensors` as a safetensors file, atomically (a failed write raises StoreError)."""
    return write_with(path, lambda p: _write(p, tensors, metadata))


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Serialize in memory, then write with Python's I/O: a full disk raises OSError (safetensors'
    own file writer reports it as a SafetensorError)."""
    path.write_bytes(save(tensors, metadata=metadata))


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
