"""Ensemble checkpoints as safetensors: the family's named tensors (EnsembleModel.tensors, each
(E, ...)) with the family's `kind`, its options and the ensemble size in the file's metadata.

An MLP stores ``weight.{ℓ}`` (E, d_ℓ, d_{ℓ-1}) and ``bias.{ℓ}`` (E, d_ℓ), ℓ = 1..L; a file
without a ``family`` entry is read as a biased ReLU MLP..

`load_model_file` also reads other tools' state dicts of Linear layers."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from bnrank.atomic import write_with
from bnrank.errors import ModelError, StoreError
from bnrank.models import EnsembleMLP, EnsembleModel, family

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


def _layer_order(key: str) -> list:
    """Natural sort key of a layer prefix ("layers.10" after "layers.2")."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def mlp_from_state_dict(tensors: dict[str, torch.Tensor], source: str, natural_order: bool = False) -> EnsembleMLP:
    """A one-member EnsembleMLP from a state dict of Linear layers (``P.weight`` (out, in) and
    optional ``P.bias`` (out,) per layer P), read as Linear, ReLU, ..., Linear in the dict's
    order (in natural order of the prefixes P with `natural_order`, for formats that do not keep
    the order). A tensor that does not fit raises ModelError naming it."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias") or (leaf == "weight" and t.dim() != 2) or (leaf == "bias" and t.dim() != 1):
            raise ModelError(f"{source}: tensor {key!r} of shape {tuple(t.shape)} does not map onto a Linear layer "
                             "(expected PREFIX.weight (out, in) and PREFIX.bias (out,))")
        layers.setdefault(prefix, {})[leaf] = t
    if not layers:
        raise ModelError(f"{source}: no tensors")
    order = sorted(layers, key=_layer_order) if natural_order else list(layers)
    weights, biases = [], []
    for prefix in order:
        name = f"{prefix}." if prefix else ""
        if "weight" not in layers[prefix]:
            raise ModelError(f"{source}: tensor {name}bias has no {name}weight")
        w = layers[prefix]["weight"]
        b = layers[prefix].get("bias", torch.zeros(w.shape[0], dtype=w.dtype))
        if b.shape != (w.shape[0],):
            raise ModelError(f"{source}: tensor {name}bias has shape {tuple(b.shape)}, but {name}weight has {w.shape[0]} rows")
        if weights and w.shape[1] != weights[-1].shape[0]:
            raise ModelError(f"{source}: tensor {name}weight takes {w.shape[1]} inputs but the layer before it gives {weights[-1].shape[0]}")
        if not (w.is_floating_point() and b.is_floating_point()):
            raise ModelError(f"{source}: tensor {name}weight is not floating point ({w.dtype})")
        weights.append(w)
        biases.append(b.to(w.dtype))
    return EnsembleMLP([w[None].clone() for w in weights], [b[None].clone() for b in biases])


def load_model_file(path: str | Path, dtype: torch.dtype | None = None, device: str = "cpu") -> EnsembleModel:
    """A network from a file: a bnrank checkpoint (.safetensors, `save_checkpoint`), or another
    tool's state dict of Linear layers (`mlp_from_state_dict`) saved as .safetensors or with
    torch.save (.pt, .pth, .bin; read with ``torch.load(weights_only=True)``, which never
    unpickles arbitrary objects). Unreadable files raise StoreError, unmappable ones ModelError."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"model file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("format") == FORMAT:
                    return load_checkpoint(path, dtype=dtype, device=device)
            net = mlp_from_state_dict(load_file(str(path)), str(path), natural_order=True)
        except (SafetensorError, OSError) as err:
            raise StoreError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and torch errors of many types
            raise ModelError(f"{path}: torch.load(weights_only=True) cannot read it ({type(err).__name__}: a whole pickled "
                             "model, other Python objects, or not a torch file); save model.state_dict() with torch.save") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None) if isinstance(state, dict) else None
            what = f"entry {bad!r} is a {type(state[bad]).__name__}" if bad is not None else f"it holds a {type(state).__name__}"
            raise ModelError(f"{path}: not a state dict of tensors ({what}); save the state dict itself with torch.save")
        net = mlp_from_state_dict(state, str(path))
    net = net.to(device)
    return net if dtype is None else net.to(dtype)
