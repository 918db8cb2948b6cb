"""Tasks from your own data: files (.npy, .npz, .csv, .parquet, .safetensors) or arrays.

A data file holds the inputs x (N, d_in) and targets y (N, d_out) of one split, named as a
`FileTask` config says (bnrank.config): arrays of a .npz / .safetensors file, columns of a
.csv / .parquet file, column indices of a 2-d .npy array. Every part is checked before anything
trains: numeric, real, finite, at least one row, x and y of equal length, targets of a
floating-point type (an integer target is refused: cast it if its values are meant). A problem
raises one DataError naming the file.

The data's identity is `data_sha256`: the SHA-256 of the four float64 arrays (x_train, y_train,
x_test, y_test; shapes included), whatever format they came in, so a config or sweep cell over
the data is addressed by its content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bnrank.errors import ConfigError, DataError
from bnrank.tasks.base import TaskData

FORMATS = (".npy", ".npz", ".csv", ".parquet", ".safetensors")
NAMED_ARRAYS = (".npz", ".safetensors")
"""Formats holding named arrays; the others hold columns (x and y default to all / no columns)."""
DEFAULT_NAMES = {"inputs": ["x"], "targets": ["y"]}

_hash_cache: dict[tuple, str] = {}


# -- reading a file -------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown data format {suffix or '(no extension)'!r} (use {', '.join(FORMATS)})")
    return suffix


def _read(path: Path) -> dict[str, np.ndarray]:
    """The file's columns or arrays by name, in file order (a .npy array's columns by index)."""
    suffix = _suffix(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        if suffix == ".npy":
            a = np.load(path, allow_pickle=False)
            if a.ndim != 2:
                raise DataError(f"{path}: expected a 2-d array (N, columns), got shape {a.shape}")
            parts = {str(j): a[:, j] for j in range(a.shape[1])}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                parts = {name: z[name] for name in z.files}
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            parts = {name: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for name, t in load_file(str(path)).items()}
        else:
            import pandas as pd

            df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
            parts = {str(name): df[name].to_numpy() for name in df.columns}
    except DataError:
        raise
    except Exception as err:  # each reader has its own error types (zipfile, pyarrow, pandas, safetensors, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a valid {suffix} file ({reason})") from None
    if not parts:
        raise DataError(f"{path}: no arrays or columns")
    return parts


def _names(path: Path, columns: list[str], names: list | None, role: str, other: list[str]) -> list[str]:
    """The keys of `role` ("inputs" / "targets") in the file: given, or the format's default."""
    suffix = path.suffix.lower()
    if names is None:
        if suffix in NAMED_ARRAYS:
            return DEFAULT_NAMES[role]
        if role == "targets":
            raise DataError(f"{path}: name the target columns (task.targets, --targets); the file has {_listing(columns)}")
        return [c for c in columns if c not in other]
    keys = []
    for name in names:
        key = str(name)
        if suffix == ".npy":
            if not isinstance(name, int) and not key.lstrip("-").isdigit():
                raise DataError(f"{path}: {role} of a .npy file are column indices, got {name!r}")
            index = int(key)
            if not -len(columns) <= index < len(columns):
                raise DataError(f"{path}: no column {index} (the array has {len(columns)} columns)")
            key = str(index % len(columns))
        keys.append(key)
    return keys


def _listing(columns: list[str]) -> str:
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    return f"{len(columns)} {'column' if len(columns) == 1 else 'columns'}: {shown}"


def read_data_file(path: str | Path, inputs: list | None = None, targets: list | None = None,
                   need_targets: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(x (N, d_in), y (N, d_out) or None) of a data file, float64, checked (see the module doc).

    Without `need_targets` a file without targets (no `targets` given for a column format, no
    array ``y``) gives y = None.
    """
    path = Path(path)
    parts = _read(path)
    columns = list(parts)
    suffix = path.suffix.lower()
    if not need_targets and targets is None and (suffix not in NAMED_ARRAYS or "y" not in parts):
        target_keys = []
    else:
        target_keys = _names(path, columns, targets, "targets", [])
    input_keys = _names(path, columns, inputs, "inputs", target_keys)
    what = "arrays" if suffix in NAMED_ARRAYS else "columns"
    for key in input_keys + target_keys:
        if key not in parts:
            raise DataError(f"{path}: no {what[:-1]} {key!r} (the file has {what} {', '.join(columns[:12])})")
    if not input_keys:
        raise DataError(f"{path}: no input columns left besides the targets")
    if both := [key for key in input_keys if key in target_keys]:
        raise DataError(f"{path}: {what[:-1]} {both[0]!r} is both an input and a target")
    x = _side_by_side(path, parts, input_keys, "x")
    y = _side_by_side(path, parts, target_keys, "y") if target_keys else None
    return check_arrays(x, y, str(path))


def _side_by_side(path: Path, parts: dict[str, np.ndarray], keys: list[str], label: str) -> np.ndarray:
    """The named parts, each checked (`_matrix`), as the columns of one float64 (N, d) array."""
    what = "array" if path.suffix.lower() in NAMED_ARRAYS else "column"
    cols = [_matrix(parts[key], f"{what} {key!r}", str(path), target=label == "y") for key in keys]
    rows = {c.shape[0] for c in cols}
    if len(rows) > 1:
        raise DataError(f"{path}: the {label} {what}s {', '.join(map(repr, keys))} have different numbers of rows {sorted(rows)}")
    return np.concatenate(cols, axis=1)


# -- checking arrays ------------------------------------------------------------------------------


def _to_numpy(a, name: str, source: str) -> np.ndarray:
    if isinstance(a, Tensor):
        t = a.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as err:
        raise DataError(f"{source}: {name} is not an array ({err})") from None


def _matrix(a: np.ndarray, name: str, source: str, target: bool) -> np.ndarray:
    """`a` as a float64 (N, d) array: (N,) becomes (N, 1); bad dtypes or values raise DataError."""
    kind = a.dtype.kind
    if kind == "c":
        raise DataError(f"{source}: {name} holds complex numbers; bnrank needs real values")
    if target and kind in "biu":
        raise DataError(
            f"{source}: {name} is integer-typed ({a.dtype}); targets are real-valued regression targets: "
            f"cast them to float (e.g. y.astype('float64')) if their values are meant"
        )
    if kind not in "biuf":
        raise DataError(f"{source}: {name} is not numeric ({a.dtype})")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{source}: {name} must be (N, d) or (N,), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{source}: {name} is empty (shape {a.shape})")
    a = np.ascontiguousarray(a, dtype=np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{source}: {name} contains NaN or inf (first at row {row}, column {col})")
    return a


def check_arrays(x, y, source: str = "data") -> tuple[np.ndarray, np.ndarray | None]:
    """x (and y, if given) as checked float64 (N, d) arrays of equal N; DataError naming `source`."""
    x = _matrix(_to_numpy(x, "x", source), "x", source, target=False)
    if y is None:
        return x, None
    y = _matrix(_to_numpy(y, "y", source), "y", source, target=True)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{source}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    return x, y


# -- hashing --------------------------------------------------------------------------------------


def data_sha256(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> str:
    """SHA-256 (64 hex digits) of the four float64 arrays: each one's shape, then its bytes (little-endian)."""
    digest = hashlib.sha256()
    for a in (x_train, y_train, x_test, y_test):
        a = np.ascontiguousarray(a, dtype="<f8")
        digest.update(repr(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _splits(train: str, test: str | None, inputs, targets, n_train: int | None = None,
            n_test: int | None = None) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) of the files: at most the first n_train / n_test rows."""
    x, y = read_data_file(train, inputs, targets)
    x, y = x[:n_train], y[:n_train]
    if test is None:
        return x, y, np.empty((0, x.shape[1])), np.empty((0, y.shape[1]))
    x_test, y_test = read_data_file(test, inputs, targets)
    x_test, y_test = x_test[:n_test], y_test[:n_test]
    if x_test.shape[1] != x.shape[1] or y_test.shape[1] != y.shape[1]:
        raise DataError(
            f"{test}: test data has d_in = {x_test.shape[1]}, d_out = {y_test.shape[1]} but the training "
            f"data {train} has d_in = {x.shape[1]}, d_out = {y.shape[1]}"
        )
    return x, y, x_test, y_test


def _stat(path: str | None) -> tuple:
    if path is None:
        return ()
    try:
        st = Path(path).stat()
    except OSError:
        return (path,)
    return (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def file_sha256(train: str, test: str | None = None, inputs=None, targets=None, n_train: int | None = None,
                n_test: int | None = None) -> str:
    """`data_sha256` of the task the files give (remembered per file version, so validating a
    config many times reads its files once)."""
    key = (_stat(train), _stat(test), repr(inputs), repr(targets), n_train, n_test)
    if key not in _hash_cache:  # a file that cannot be read raises here, and nothing is kept
        _hash_cache[key] = data_sha256(*_splits(train, test, inputs, targets, n_train, n_test))
    return _hash_cache[key]


# -- building the task ----------------------------------------------------------------------------


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Centre and scale per column by the training set's mean and std (a constant column: std 1)."""
    mean = train.mean(0)
    std = train.std(0, ddof=1) if train.shape[0] > 1 else np.zeros_like(mean)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std, mean.tolist(), std.tolist()


def arrays_task(x_train, y_train, x_test, y_test, standardize: str = "none", metadata: dict | None = None) -> tuple[str, TaskData]:
    """(sha256 of the raw arrays, the TaskData) of checked float64 arrays, standardized as asked
    (``none``, ``inputs``, ``targets``, ``both``); mean and std go into the metadata."""
    sha = data_sha256(x_train, y_train, x_test, y_test)
    meta = {"kind": "file", **(metadata or {}), "sha256": sha, "standardize": standardize}
    if standardize in ("inputs", "both"):
        x_train, x_test, meta["input_mean"], meta["input_std"] = _standardize(x_train, x_test)
    if standardize in ("targets", "both"):
        y_train, y_test, meta["target_mean"], meta["target_std"] = _standardize(y_train, y_test)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, y_train, x_test, y_test)]
    return sha, TaskData(*tensors, meta)


def file_task(cfg) -> TaskData:
    """The task a `FileTask` config describes; DataError when its files' data no longer has the
    config's sha256 (they changed since it was resolved)."""
    if cfg.train is None:
        given = f" (the arrays with sha256 {cfg.sha256[:12]}... were given to bnrank.train)" if cfg.sha256 else ""
        raise DataError(f"task kind 'file' has no train file{given}: set task.train, or pass x and y to bnrank.train")
    splits = _splits(cfg.train, cfg.test, cfg.inputs, cfg.targets, cfg.n_train, cfg.n_test)
    meta = {"train": cfg.train, "test": cfg.test, "inputs": cfg.inputs, "targets": cfg.targets,
            "n_train": splits[0].shape[0], "n_test": splits[2].shape[0]}
    sha, task = arrays_task(*splits, standardize=cfg.standardize, metadata=meta)
    if cfg.sha256 is not None and sha != cfg.sha256:
        raise DataError(
            f"{cfg.train}: the data changed since the config was resolved (sha256 {sha[:12]}... , the config "
            f"records {cfg.sha256[:12]}...): a run or sweep of the old data cannot continue with it; "
            f"set task.sha256: null to use the new data (in a sweep over several files: next to each task.train)"
        )
    return task


def config_with_arrays(cfg, x, y, x_test=None, y_test=None):
    """(cfg with its task replaced by a `file` task recording the arrays' sha256, TaskData) for
    arrays given to bnrank.train; the config's task must be a file task without files, or unset."""
    from bnrank.config import FileTask

    task_cfg = cfg.task
    if task_cfg.kind != "file" and "task" in cfg.model_fields_set:
        raise ConfigError(f"x and y replace the config's task: give task kind 'file' (for standardize) or none, not {task_cfg.kind!r}")
    if task_cfg.kind == "file" and (task_cfg.train is not None or task_cfg.test is not None):
        raise ConfigError("pass the data either as task.train/task.test files or as x and y arrays, not both")
    if x is None or y is None:
        raise DataError("bnrank.train needs both x and y (and x_test with y_test, or neither)")
    if (x_test is None) != (y_test is None):
        raise DataError("bnrank.train needs x_test and y_test together")
    n_train, n_test = (task_cfg.n_train, task_cfg.n_test) if task_cfg.kind == "file" else (None, None)
    x, y = check_arrays(x, y, "train data")
    x, y = x[:n_train], y[:n_train]
    if x_test is None:
        x_test, y_test = np.empty((0, x.shape[1])), np.empty((0, y.shape[1]))
    else:
        x_test, y_test = check_arrays(x_test, y_test, "test data")
        x_test, y_test = x_test[:n_test], y_test[:n_test]
        if x_test.shape[1] != x.shape[1] or y_test.shape[1] != y.shape[1]:
            raise DataError(
                f"test data: x_test, y_test have {x_test.shape[1]} and {y_test.shape[1]} columns but x, y "
                f"have {x.shape[1]} and {y.shape[1]}"
            )
    standardize = task_cfg.standardize if task_cfg.kind == "file" else "none"
    sha, task = arrays_task(x, y, x_test, y_test, standardize=standardize)
    new_task = FileTask(standardize=standardize, n_train=n_train, n_test=n_test, sha256=sha)
    return cfg.model_copy(update={"task": new_task}), task


def with_data_files(config: Any, train: str | Path, test: str | Path | None = None, inputs: list[str] | None = None,
                    targets: list[str] | None = None, source: str = "config") -> dict:
    """A run config dict whose task is the given data files (what ``bnrank train --data`` trains
    on): the config's task replaced, keeping `standardize` of a file task. Without a config
    (None) every default is written out, so ``--set train.phases.0.steps=...`` finds its key."""
    from bnrank.config import RunConfig

    config = RunConfig().model_dump(mode="json") if config is None else config
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    old = config.get("task")
    kept = {"standardize": old["standardize"]} if isinstance(old, dict) and old.get("kind") == "file" and "standardize" in old else {}
    given = {"test": None if test is None else str(test), "inputs": inputs, "targets": targets}
    task = {"kind": "file", "train": str(train), **kept, **{k: v for k, v in given.items() if v is not None}}
    return {**config, "task": task}
