"""Ensemble checkpoints as safetensors: the family's named tensors (EnsembleModel.tensors, each
(E, ...)) with the family's `kind`, its options and the ensemble size in the file's metadata.

An MLP stores ``weight.{ℓ}`` (E, d_ℓ, d_{ℓ-1}) and ``bias.{ℓ}`` (E, d_ℓ), ℓ = 1..L; a file
without a ``family`` entry is read as a biased ReLU MLP."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from bnrank.atomic import write_with
from bnrank.errors import ModelError, StoreError
from bnrank.models import EnsembleModel, family

FORMAT = "bnrank.ensemble"


def save_checkpoint(model: EnsembleModel, path: str | Path) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.tensors().items()}
    meta = {"format": FORMAT, "family": model.kind, "depth": str(model.depth), "members": str(model.members)}
    meta |= model.metadata()
    return write_safetensors(path, tensors, meta)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write `tensors` as a safetensors file, atomically (a failed write raises StoreError)."""
    return write_with(path, lambda p: _write(p, tensors, metadata))


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Serialize in memory, then write with Python's I/O: a full disk raises OSError (safetensors'
    own file writer reports it as a SafetensorError)."""
    path.write_bytes(save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str = "cpu") -> EnsembleModel:
    """Read a checkpoint written by `save_checkpoint`; a missing or corrupt file raises StoreError."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=device)
        if dtype is not None:
            tensors = {k: v.to(dtype) for k, v in tensors.items()}
        return family(meta.get("family", "mlp")).from_tensors(tensors, meta)
    except (SafetensorError, OSError, KeyError, ValueError, ModelError) as err:
        raise StoreError(f"corrupt or foreign checkpoint {path}: {err}") from None
